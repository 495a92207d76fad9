"""The `triton-sm90` backend: the `triton` backend with Hopper's sparse decode kernels (Gluon, wgmma).

Hopper GPUs (SM 9.x) with Gluon get it by default. Sparse attention calls that the Hopper kernels
take (plain bf16/fp16 rows or V4's fp8_ds_mla pages, enough work: `sparse_attn_sm90.takes`) run them;
every other call and op runs the portable kernels, so choosing this backend never loses a feature.
"""

from __future__ import annotations

import torch

from vllm.attention.backends.triton_backend import TritonAttentionBackend
from vllm.kernels import sparse_attn, sparse_attn_sm90


class TritonSm90AttentionBackend(TritonAttentionBackend):
    name = "triton-sm90"

    @classmethod
    def unsupported_reason(cls, device: torch.device, kv_cache_dtype: str = "auto") -> str | None:
        return super().unsupported_reason(device, kv_cache_dtype) or sparse_attn_sm90.device_unsupported_reason(device)

    def sparse_attention(self, q, sources, sink, scale):
        if sparse_attn_sm90.takes(q, sources):
            return sparse_attn_sm90.launch(q, sources, sink, scale)
        return sparse_attn.sparse_attn(q, sources, sink, scale)
