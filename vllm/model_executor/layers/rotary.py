"""Interleaved (GPT-J) partial RoPE on the trailing `rope_dim` channels, with DeepSeek's YaRN (spec §3.5)."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Holds the per-pair inverse frequencies (YaRN already folded in by the config)."""

    def __init__(self, inv_freq: list[float]):
        super().__init__()
        self.rope_dim = 2 * len(inv_freq)
        self.register_buffer("inv_freq", torch.tensor(inv_freq, dtype=torch.float32), persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions `[T]` -> cos, sin `[T, rope_dim/2]` fp32."""
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]
        return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the last `2*cos.shape[-1]` channels by +angle (or -angle).

    x: `[T, ..., D]` with the token dim first; cos/sin: `[T, r/2]` fp32. Math in fp32, result in x.dtype.
    """
    r = 2 * cos.shape[-1]
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[-1],)
    c, s = cos.view(shape), sin.view(shape)
    if inverse:
        s = -s
    rope = x[..., -r:].float().unflatten(-1, (-1, 2))
    x0, x1 = rope[..., 0], rope[..., 1]
    rotated = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return torch.cat([x[..., :-r], rotated.to(x.dtype)], dim=-1)
