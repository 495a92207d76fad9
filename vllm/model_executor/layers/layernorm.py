"""RMSNorm: y = w * x * rsqrt(mean(x^2) + eps), statistics in fp32 (spec §2). The math is the MoE/GEMM
backend's (`vllm/kernels/rms_norm.py`: `rms_norm_ref` defines it)."""

from __future__ import annotations

import torch
from torch import nn

from vllm.forward_context import current_moe_gemm_backend


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMS normalisation over the last dim, computed in fp32, returned in x's dtype."""
    return current_moe_gemm_backend().rms_norm(x, None, eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return current_moe_gemm_backend().rms_norm(x, self.weight, self.eps)
