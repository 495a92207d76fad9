"""Compressor pooling: per-channel softmax over a window's candidates, weighted sum (spec §3.6)."""

from __future__ import annotations

import torch


def compress_pool_ref(kv: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """kv, score `[n, L, d]` fp32 (score -inf = absent candidate) -> `[n, d]` fp32."""
    return (kv * torch.softmax(score, dim=1)).sum(dim=1)
