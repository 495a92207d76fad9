"""The attention-backend interface: the three DeepSeek V4 attention ops a model layer calls.

A backend declares where it runs (`unsupported_reason`) and implements the ops with the
same semantics as the references in `vllm/kernels/`. Layers never branch on the backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class AttentionBackend(ABC):
    name: str = "abstract"

    @classmethod
    @abstractmethod
    def unsupported_reason(cls, device: torch.device) -> str | None:
        """None if this backend runs on `device`, else why not (shown in the selector's log)."""

    @abstractmethod
    def sparse_attention(self, q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sink: torch.Tensor,
                         scale: float) -> torch.Tensor:
        """q `[T,H,D]`, kv `[N,D]`, indices `[T,K]` (-1 skip), sink `[H]` -> `[T,H,D]` (see sparse_attn_ref)."""

    @abstractmethod
    def indexer_topk(self, q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor,
                     ratio: int, topk: int, softmax_scale: float) -> torch.Tensor:
        """Causal top-k compressed entry ids per query (see indexer_topk_ref)."""

    @abstractmethod
    def compress_pool(self, kv: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Per-channel softmax pooling of compressor windows (see compress_pool_ref)."""
