"""The `triton` backend: portable Triton kernels for every CUDA GPU from SM 8.0 (SM12x included).

On a CPU it runs only under Triton's interpreter (TRITON_INTERPRET=1), which the tests use;
the selector never prefers it there.
"""

from __future__ import annotations

import torch

from vllm.attention.backend import AttentionBackend
from vllm.kernels import compress_pool, fp8_ds_mla, indexer_topk, sparse_attn
from vllm.kernels._triton import triton_unsupported_reason


class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    @classmethod
    def unsupported_reason(cls, device: torch.device, kv_cache_dtype: str = "auto") -> str | None:
        return triton_unsupported_reason(device, "an fp8 KV cache" if kv_cache_dtype != "auto" else None)

    def sparse_attention(self, q, sources, sink, scale):
        return sparse_attn.sparse_attn(q, sources, sink, scale)

    def indexer_topk(self, q, weights, keys, entry_slots, query_req, num_visible, topk, softmax_scale):
        return indexer_topk.indexer_topk(q, weights, keys, entry_slots, query_req, num_visible, topk, softmax_scale)

    def compress_entries(self, state, window_slots, prev_slots, norm_weight, eps, cos, sin, dtype):
        return compress_pool.compress_entries(state, window_slots, prev_slots, norm_weight, eps, cos, sin, dtype)

    def fp8_insert(self, cache, kv, slot_mapping, layout):
        fp8_ds_mla.insert(cache, kv.contiguous(), slot_mapping, layout)
