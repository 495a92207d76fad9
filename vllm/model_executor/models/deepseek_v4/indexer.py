"""Lightning indexer (spec §3.7): picks the top-k compressed entries each CSA query attends to.

score[t, j] = sum_h w[t,h] * relu(q[t,h] . k_j) / sqrt(dh), with w = weights_proj(x) / sqrt(Hi),
q from the shared low-rank query `qr`, k_j from the indexer's own overlapping compressor.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm.attention.backend import AttentionBackend
from vllm.attention.metadata import CompressedMetadata
from vllm.core.kv_cache.paged_rows import LayerCaches
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.layers.quantization.methods import LinearMethod
from vllm.model_executor.layers.rotary import RotaryEmbedding, apply_rope
from vllm.model_executor.models.deepseek_v4.compressor import Compressor


class Indexer(nn.Module):
    def __init__(self, hidden: int, q_lora_rank: int, n_heads: int, head_dim: int, topk: int, ratio: int,
                 rotary: RotaryEmbedding, eps: float, dtype: torch.dtype, method: LinearMethod):
        super().__init__()
        self.n_heads, self.head_dim, self.topk, self.ratio = n_heads, head_dim, topk, ratio
        self.wq_b = ReplicatedLinear(q_lora_rank, n_heads * head_dim, method, dtype)
        self.weights_proj = ReplicatedLinear(hidden, n_heads, dtype=dtype)
        self.compressor = Compressor(hidden, head_dim, ratio, True, rotary, eps, dtype)

    def forward(self, x: torch.Tensor, qr: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, caches: LayerCaches, meta: CompressedMetadata, query_req: torch.Tensor,
                backend: AttentionBackend) -> torch.Tensor:
        """-> `[T, k]` compressed-entry slots each query reads (-1 = none); also writes the new keys."""
        caches.index_keys.write(self.compressor(x, positions, caches.index_state, meta, backend),
                                meta.new_entry_slots)
        q = apply_rope(self.wq_b(qr).view(-1, self.n_heads, self.head_dim), cos, sin)  # [T, Hi, dh]
        weights = self.weights_proj(x).float() * self.n_heads**-0.5
        return backend.indexer_topk(q, weights, caches.index_keys, meta.entry_slots, query_req, meta.num_visible,
                                    self.topk, self.head_dim**-0.5)
