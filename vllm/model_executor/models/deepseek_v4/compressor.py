"""KV compressor (spec §3.6): pools every `ratio` tokens into one latent entry.

Per token: kv = x Wkv^T, score = x Wgate^T + ape[pos % ratio] (fp32). An entry is the
per-channel softmax(score)-weighted sum over its candidates:
- plain (HCA): the `ratio` tokens of its window;
- overlapping (CSA): the previous window's tokens on the first `d` channels plus its own
  window's tokens on the second `d` channels (2*ratio candidates; none before entry 0).
Then RMSNorm and RoPE at the window's first position. Every token's [kv | score] row goes to the
paged carry-over state, so an entry completes whenever its last token arrives, whatever the
chunking; the state rows of an incomplete window (and, for CSA, the window before it) stay live.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm.attention.backend import AttentionBackend
from vllm.attention.metadata import CompressedMetadata
from vllm.core.kv_cache.paged_rows import PagedRows
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.layers.rotary import RotaryEmbedding


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

    def forward(self, x: torch.Tensor, positions: torch.Tensor, state: PagedRows, meta: CompressedMetadata,
                backend: AttentionBackend) -> torch.Tensor:
        """x `[T, D]` -> entries completed this step `[E, dim]` in x.dtype (order of meta's new entries)."""
        xf = x.float()
        kv = F.linear(xf, self.wkv.weight.float())  # [T, width] fp32, as the reference
        score = F.linear(xf, self.wgate.weight.float()) + self.ape[positions % self.ratio]
        state.write(torch.cat([kv, score], dim=1), meta.state_slots)
        if meta.new_entry_slots.shape[0] == 0:
            return x.new_zeros(0, self.dim)
        cos, sin = self.rotary.cos_sin(meta.new_entry_positions)
        return backend.compress_entries(state, meta.new_window_slots, meta.new_prev_slots if self.overlap else None,
                                        self.norm.weight, self.norm.eps, cos, sin, x.dtype)
