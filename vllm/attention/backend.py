"""The attention-backend interface: the three DeepSeek V4 attention ops a model layer calls.

A backend declares where it runs (`unsupported_reason`) and implements the ops with the
same semantics as the references in `vllm/kernels/`. Layers never branch on the backend.
KV sources are paged rows (`vllm/core/kv_cache/paged_rows.py`) addressed by global slots.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch


class AttentionBackend(ABC):
    name: str = "abstract"

    @classmethod
    @abstractmethod
    def unsupported_reason(cls, device: torch.device, kv_cache_dtype: str = "auto") -> str | None:
        """None if this backend runs on `device` with this KV cache dtype, else why not (for the selector's log)."""

    @abstractmethod
    def sparse_attention(self, q: torch.Tensor, sources: Sequence[tuple[object, torch.Tensor]], sink: torch.Tensor,
                         scale: float) -> torch.Tensor:
        """q `[T,H,D]`, sources (kv rows, indices `[T,K]` -1 skip), sink `[H]` -> `[T,H,D]` (see sparse_attn_ref)."""

    @abstractmethod
    def indexer_topk(self, q: torch.Tensor, weights: torch.Tensor, keys, entry_slots: torch.Tensor,
                     query_req: torch.Tensor, num_visible: torch.Tensor, topk: int,
                     softmax_scale: float) -> torch.Tensor:
        """Causal top-k compressed entry slots per query (see indexer_topk_ref)."""

    @abstractmethod
    def compress_entries(self, state, window_slots: torch.Tensor, prev_slots: torch.Tensor | None,
                         norm_weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                         dtype: torch.dtype) -> torch.Tensor:
        """Finished compressor entries `[E, dim]` from the state rows: pooled, RMSNorm, RoPE (see
        compress_entries_ref)."""

    @abstractmethod
    def fp8_insert(self, cache: torch.Tensor, kv: torch.Tensor, slot_mapping: torch.Tensor, layout) -> None:
        """Quantize rows into fp8_ds_mla pages (see fp8_ds_mla.insert_ref)."""
