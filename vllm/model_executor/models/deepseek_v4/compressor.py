"""KV compressor (spec §3.6): pools every `ratio` tokens into one latent entry.

Per token: kv = x Wkv^T, score = x Wgate^T + ape[pos % ratio] (fp32). An entry is the
per-channel softmax(score)-weighted sum over its candidates:
- plain (HCA): the `ratio` tokens of its window;
- overlapping (CSA): the previous window's tokens on the first `d` channels plus its own
  window's tokens on the second `d` channels (2*ratio candidates; none before entry 0).
Then RMSNorm and RoPE at the window's first position. Entries appear only when a window is
complete; the incomplete tail and the overlap half are carried to the next chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm.attention.backend import AttentionBackend
from vllm.core.kv_cache.contiguous import CompressorCarry
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.layers.rotary import RotaryEmbedding, apply_rope


class Compressor(nn.Module):
    def __init__(self, hidden: int, dim: int, ratio: int, overlap: bool, rotary: RotaryEmbedding, eps: float,
                 dtype: torch.dtype):
        super().__init__()
        self.dim, self.ratio, self.overlap = dim, ratio, overlap
        width = (2 if overlap else 1) * dim
        self.wkv = ReplicatedLinear(hidden, width, dtype=dtype)
        self.wgate = ReplicatedLinear(hidden, width, dtype=dtype)
        self.ape = nn.Parameter(torch.empty(ratio, width, dtype=torch.float32), requires_grad=False)
        self.norm = RMSNorm(dim, eps, dtype)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, carry: CompressorCarry, backend: AttentionBackend) -> torch.Tensor:
        """x `[T, D]` (the next tokens of one sequence) -> newly completed entries `[n, dim]` in x.dtype."""
        xf = x.float()
        kv = F.linear(xf, self.wkv.weight.float())  # [T, width] fp32, as the reference
        score = F.linear(xf, self.wgate.weight.float())
        if carry.pending_kv is not None:
            kv, score = torch.cat([carry.pending_kv, kv]), torch.cat([carry.pending_score, score])
        n = kv.shape[0] // self.ratio
        used = n * self.ratio
        carry.pending_kv, carry.pending_score = kv[used:], score[used:]
        if n == 0:
            return x.new_zeros(0, self.dim)
        kv = kv[:used].view(n, self.ratio, -1)  # [n, ratio, width]
        score = score[:used].view(n, self.ratio, -1) + self.ape
        if self.overlap:
            kv, score = self._overlap_candidates(kv, score, carry)
        pooled = backend.compress_pool(kv, score).to(x.dtype)  # [n, dim]
        entries = self.norm(pooled)
        positions = (carry.entries + torch.arange(n, device=x.device)) * self.ratio
        carry.entries += n
        cos, sin = self.rotary.cos_sin(positions)
        return apply_rope(entries, cos, sin)

    def _overlap_candidates(self, kv: torch.Tensor, score: torch.Tensor, carry: CompressorCarry):
        """[n, ratio, 2d] -> [n, 2*ratio, d]: previous window's first half, then own window's second half."""
        d, n = self.dim, kv.shape[0]
        prev_kv = kv.new_zeros(n, self.ratio, d)
        prev_score = score.new_full((n, self.ratio, d), float("-inf"))
        if carry.prev_kv is not None:
            prev_kv[0], prev_score[0] = carry.prev_kv, carry.prev_score
        prev_kv[1:], prev_score[1:] = kv[:-1, :, :d], score[:-1, :, :d]
        carry.prev_kv, carry.prev_score = kv[-1, :, :d].clone(), score[-1, :, :d].clone()
        return torch.cat([prev_kv, kv[..., d:]], dim=1), torch.cat([prev_score, score[..., d:]], dim=1)
