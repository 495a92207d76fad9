"""The MoE/GEMM backend interface: every non-attention op of a DeepSeek V4 layer that has a kernel.

Linears (plain, block-FP8, MXFP4, grouped `wo_a`), the ffn norm with the router, the routed + shared
experts, RMSNorm and the mHC residual mixing. A backend declares where it runs (`unsupported_reason`) and
implements the ops with the semantics of the references in `vllm/kernels/` (`*_ref`). Layers never branch
on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from vllm.kernels.fused_moe import ExpertWeights
from vllm.kernels.quant_gemm import QuantWeight


class MoEGemmBackend(ABC):
    name: str = "abstract"

    def __init__(self, fuse_shared_experts: bool = True):
        self.fuse_shared_experts = fuse_shared_experts
        """Run the shared expert inside the routed MoE launches (where the backend can)."""

    @classmethod
    @abstractmethod
    def unsupported_reason(cls, device: torch.device, weight_formats: frozenset[str] = frozenset()) -> str | None:
        """None if this backend runs on `device` with these weight formats, else why not."""

    @abstractmethod
    def linear(self, x: torch.Tensor, w: QuantWeight, groups: int = 1) -> torch.Tensor:
        """x @ W^T in W's format; groups > 1: block-diagonal (see quant_gemm.linear_ref)."""

    @abstractmethod
    def moe(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, routed: ExpertWeights,
            shared: ExpertWeights | None, limit: float) -> torch.Tensor:
        """Routed experts (+ the shared expert, unweighted) -> `[T, D]` (see fused_moe.fused_moe_ref)."""

    @abstractmethod
    def norm_router(self, x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                    bias: torch.Tensor | None, tid2eid: torch.Tensor | None, input_ids: torch.Tensor | None, *,
                    top_k: int, score_func: str, renormalize: bool,
                    scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ffn input's RMSNorm and the router as one op (a backend may fuse them) -> (normed x, weights,
        ids) (see moe_router.norm_router_ref)."""

    @abstractmethod
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        """RMSNorm over the last dim, weightless when weight is None (see rms_norm.rms_norm_ref)."""

    @abstractmethod
    def mhc_pre(self, streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, iters: int,
                hc_eps: float, norm_eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """streams `[T, hc, D]` -> (x `[T, D]`, post `[T, hc]`, comb `[T, hc, hc]`) (see mhc.mhc_pre_ref)."""

    @abstractmethod
    def mhc_post(self, y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor,
                 comb: torch.Tensor) -> torch.Tensor:
        """New streams `[T, hc, D]` (see mhc.mhc_post_ref)."""

    @abstractmethod
    def mhc_head(self, streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor,
                 hc_eps: float, norm_eps: float) -> torch.Tensor:
        """Streams collapsed to `[T, D]` (see mhc.mhc_head_ref)."""
