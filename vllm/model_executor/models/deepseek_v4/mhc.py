"""Manifold-constrained hyper-connections (mHC, spec §3.3): the residual path of DeepSeek V4.

The residual is `hc` parallel streams `X [T, hc, D]`. A sub-layer reads a token-dependent mix
of the streams (`pre`), and writes back `post_k * y + sum_j comb[j,k] * X[j]` where `comb` is
Sinkhorn-normalised to be (nearly) doubly stochastic. The math is the MoE/GEMM backend's
(`vllm/kernels/mhc.py`: `mhc_pre_ref`, `mhc_post_ref`, `mhc_head_ref` define it).
"""

from __future__ import annotations

import torch
from torch import nn

from vllm.forward_context import current_moe_gemm_backend


def _fp32_param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=torch.float32), requires_grad=False)


class HyperConnection(nn.Module):
    """One sub-layer site: `fn [(2+hc)*hc, hc*D]`, `base [(2+hc)*hc]`, `scale [3]` (fp32)."""

    def __init__(self, hc: int, dim: int, sinkhorn_iters: int, hc_eps: float, norm_eps: float):
        super().__init__()
        self.hc, self.iters, self.hc_eps, self.norm_eps = hc, sinkhorn_iters, hc_eps, norm_eps
        self.fn = _fp32_param((2 + hc) * hc, hc * dim)
        self.base = _fp32_param((2 + hc) * hc)
        self.scale = _fp32_param(3)

    def pre(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """streams `[T, hc, D]` -> (sub-layer input `[T, D]`, post `[T, hc]`, comb `[T, hc, hc]` fp32)."""
        return current_moe_gemm_backend().mhc_pre(streams, self.fn, self.base, self.scale, self.iters, self.hc_eps,
                                                  self.norm_eps)

    @staticmethod
    def post(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
        """X_new[k] = post_k * y + sum_j comb[j, k] * residual[j] (fp32 math, residual dtype out)."""
        return current_moe_gemm_backend().mhc_post(y, residual, post, comb)


class HyperHead(nn.Module):
    """Final collapse of the streams: sigmoid-weighted sum, no Sinkhorn (`hc_head_{fn,base,scale}`)."""

    def __init__(self, hc: int, dim: int, hc_eps: float, norm_eps: float):
        super().__init__()
        self.hc_eps, self.norm_eps = hc_eps, norm_eps
        self.fn = _fp32_param(hc, hc * dim)
        self.base = _fp32_param(hc)
        self.scale = _fp32_param(1)

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        return current_moe_gemm_backend().mhc_head(streams, self.fn, self.base, self.scale, self.hc_eps,
                                                   self.norm_eps)
