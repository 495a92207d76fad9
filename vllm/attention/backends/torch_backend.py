"""The `torch` backend: the kernel references themselves. Runs on any device, CPU included."""

from __future__ import annotations

import torch

from vllm.attention.backend import AttentionBackend
from vllm.kernels.compress_pool import compress_entries_ref
from vllm.kernels.fp8_ds_mla import insert_ref
from vllm.kernels.indexer_topk import indexer_topk_ref
from vllm.kernels.sparse_attn import sparse_attn_ref


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    @classmethod
    def unsupported_reason(cls, device: torch.device, kv_cache_dtype: str = "auto") -> str | None:
        return None

    def sparse_attention(self, q, sources, sink, scale):
        return sparse_attn_ref(q, sources, sink, scale)

    def indexer_topk(self, q, weights, keys, entry_slots, query_req, num_visible, topk, softmax_scale):
        return indexer_topk_ref(q, weights, keys, entry_slots, query_req, num_visible, topk, softmax_scale)

    def compress_entries(self, state, window_slots, prev_slots, norm_weight, eps, cos, sin, dtype):
        return compress_entries_ref(state, window_slots, prev_slots, norm_weight, eps, cos, sin, dtype)

    def fp8_insert(self, cache, kv, slot_mapping, layout):
        insert_ref(cache, kv, slot_mapping, layout)
