"""DeepSeek V4 MoE (spec §3.10): sqrt-softplus router (bias for selection only) or hash routing,
renormalised top-k weights x routed_scaling_factor, clamped SwiGLU experts, one shared expert.
The math lives in the MoE/GEMM backend (`router_ref`, `fused_moe_ref` define it).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vllm.forward_context import current_moe_gemm_backend
from vllm.kernels.fused_moe import ExpertWeights
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear, copy_checked
from vllm.model_executor.layers.quantization.methods import LinearMethod
from vllm.model_executor.models.deepseek_v4.config import DeepseekV4Config


def _weights(expert: nn.Module) -> ExpertWeights:
    """An expert module's gate/up/down projections as the backend's `QuantWeight`s."""
    return ExpertWeights(*(p.method.quant_weight(p) for p in (expert.w1, expert.w3, expert.w2)))


class Router(nn.Module):
    """Gate `weight [E, D]`; `bias [E]` (top-k layers) or `tid2eid [V, k]` (hash layers)."""

    def __init__(self, cfg: DeepseekV4Config, is_hash: bool, dtype: torch.dtype):
        super().__init__()
        self.k, self.is_hash = cfg.num_experts_per_tok, is_hash
        self.score_func = cfg.scoring_func
        self.renormalize, self.scaling = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size, dtype=dtype),
                                   requires_grad=False)
        if is_hash:
            self.tid2eid = nn.Parameter(torch.empty(cfg.vocab_size, self.k, dtype=torch.int64), requires_grad=False)
        else:
            self.bias = nn.Parameter(torch.empty(cfg.n_routed_experts, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor,
                norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ffn input x normalized by `norm` and routed, as one op (the backend may fuse them) ->
        (normed x, weights `[T, k]` fp32, expert ids `[T, k]` int32)."""
        routing = (None, self.tid2eid, input_ids) if self.is_hash else (self.bias, None, None)
        return current_moe_gemm_backend().norm_router(
            x, norm.weight, norm.eps, self.weight, *routing, top_k=self.k, score_func=self.score_func,
            renormalize=self.renormalize, scaling=self.scaling)


class ExpertProjection(nn.Module):
    """One projection of every routed expert, stacked: `weight [E, out, in]` (+ `weight_scale`)."""

    def __init__(self, experts: int, out_f: int, in_f: int, method: LinearMethod, dtype: torch.dtype):
        super().__init__()
        self.method = method
        method.create_weights(self, out_f, in_f, dtype, experts=experts)
        for p in self.parameters(recurse=False):
            p.weight_loader = self.weight_loader

    @staticmethod
    def weight_loader(param: torch.Tensor, loaded: torch.Tensor, name: str = "", expert: int | None = None):
        if expert is None:
            raise ValueError(f"{name}: expert weights load one expert at a time")
        copy_checked(param[expert], loaded, name)


class RoutedExperts(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, m: Callable[[], LinearMethod], dtype: torch.dtype):
        super().__init__()
        e, i, d = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
        self.num_experts = e
        self.w1 = ExpertProjection(e, i, d, m(), dtype)
        self.w3 = ExpertProjection(e, i, d, m(), dtype)
        self.w2 = ExpertProjection(e, d, i, m(), dtype)

    def weights(self) -> ExpertWeights:
        return _weights(self)


class SharedExpert(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, m: Callable[[], LinearMethod], dtype: torch.dtype):
        super().__init__()
        d, i = cfg.hidden_size, cfg.moe_intermediate_size
        self.w1 = ColumnParallelLinear(d, i, m(), dtype)
        self.w3 = ColumnParallelLinear(d, i, m(), dtype)
        self.w2 = RowParallelLinear(i, d, m(), dtype)

    def weights(self) -> ExpertWeights:
        return _weights(self)


class DeepseekV4MoE(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, is_hash: bool, dense: Callable[[], LinearMethod],
                 expert: Callable[[], LinearMethod], dtype: torch.dtype):
        super().__init__()
        self.limit = cfg.swiglu_limit
        self.gate = Router(cfg, is_hash, dtype)
        self.experts = RoutedExperts(cfg, expert, dtype)
        self.shared_experts = SharedExpert(cfg, dense, dtype)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        """x: the ffn input, normalized here by `norm` (with the routing)."""
        x, weights, ids = self.gate(x, input_ids, norm)
        return current_moe_gemm_backend().moe(x, weights, ids, self.experts.weights(),
                                              self.shared_experts.weights(), self.limit)
