"""DeepSeek V4 MoE (spec §3.10): sqrt-softplus router (bias for selection only) or hash routing,
renormalised top-k weights x routed_scaling_factor, clamped SwiGLU experts, one shared expert.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear, copy_checked
from vllm.model_executor.layers.quantization.methods import LinearMethod
from vllm.model_executor.models.deepseek_v4.config import DeepseekV4Config

_SCORE_FNS = {
    "sqrtsoftplus": lambda x: torch.sqrt(F.softplus(x)),
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
}


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """silu(min(gate, limit)) * clamp(up, -limit, limit)."""
    return F.silu(gate.clamp(max=limit)) * up.clamp(-limit, limit)


class Router(nn.Module):
    """Gate `weight [E, D]`; `bias [E]` (top-k layers) or `tid2eid [V, k]` (hash layers)."""

    def __init__(self, cfg: DeepseekV4Config, is_hash: bool, dtype: torch.dtype):
        super().__init__()
        self.k, self.is_hash = cfg.num_experts_per_tok, is_hash
        self.score_fn = _SCORE_FNS[cfg.scoring_func]
        self.renormalize, self.scaling = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size, dtype=dtype),
                                   requires_grad=False)
        if is_hash:
            self.tid2eid = nn.Parameter(torch.empty(cfg.vocab_size, self.k, dtype=torch.int64), requires_grad=False)
        else:
            self.bias = nn.Parameter(torch.empty(cfg.n_routed_experts, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (weights `[T, k]` fp32, expert ids `[T, k]` int64)."""
        scores = self.score_fn(F.linear(x.float(), self.weight.float()))  # [T, E] fp32
        if self.is_hash:
            ids = self.tid2eid[input_ids].long()
        else:
            ids = torch.topk(scores + self.bias, self.k, dim=-1).indices  # bias only picks experts
        w = scores.gather(1, ids)
        if self.renormalize:
            w = w / w.sum(-1, keepdim=True)
        return w * self.scaling, ids


class ExpertWeights(nn.Module):
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

    def matmul(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        return self.method.matmul(self, x, expert)


class RoutedExperts(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, m: Callable[[], LinearMethod], dtype: torch.dtype):
        super().__init__()
        e, i, d = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
        self.num_experts, self.limit = e, cfg.swiglu_limit
        self.w1 = ExpertWeights(e, i, d, m(), dtype)
        self.w3 = ExpertWeights(e, i, d, m(), dtype)
        self.w2 = ExpertWeights(e, d, i, m(), dtype)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e in torch.unique(ids).tolist():
            tok, slot = torch.nonzero(ids == e, as_tuple=True)
            xe = x[tok]
            h = clamped_swiglu(self.w1.matmul(xe, e).float(), self.w3.matmul(xe, e).float(), self.limit)
            h = (h * weights[tok, slot, None]).to(x.dtype)  # the reference weights h before w2
            out.index_add_(0, tok, self.w2.matmul(h, e).float())
        return out.to(x.dtype)


class SharedExpert(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, m: Callable[[], LinearMethod], dtype: torch.dtype):
        super().__init__()
        d, i = cfg.hidden_size, cfg.moe_intermediate_size
        self.limit = cfg.swiglu_limit
        self.w1 = ColumnParallelLinear(d, i, m(), dtype)
        self.w3 = ColumnParallelLinear(d, i, m(), dtype)
        self.w2 = RowParallelLinear(i, d, m(), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(clamped_swiglu(self.w1(x).float(), self.w3(x).float(), self.limit).to(x.dtype))


class DeepseekV4MoE(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, is_hash: bool, dense: Callable[[], LinearMethod],
                 expert: Callable[[], LinearMethod], dtype: torch.dtype):
        super().__init__()
        self.gate = Router(cfg, is_hash, dtype)
        self.experts = RoutedExperts(cfg, expert, dtype)
        self.shared_experts = SharedExpert(cfg, dense, dtype)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        weights, ids = self.gate(x, input_ids)
        return self.experts(x, weights, ids) + self.shared_experts(x)
