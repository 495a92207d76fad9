"""The one per-step forward context: what layers read besides their inputs (caches, backend)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from vllm.attention.backend import AttentionBackend
from vllm.core.kv_cache.contiguous import LayerKVCache


@dataclass
class ForwardContext:
    kv_caches: list[LayerKVCache]
    """This step's per-layer cache views, indexed by layer id (MTP layers after the main ones)."""
    attn_backend: AttentionBackend


_CONTEXT: ForwardContext | None = None


@contextmanager
def set_forward_context(ctx: ForwardContext) -> Iterator[None]:
    global _CONTEXT
    prev, _CONTEXT = _CONTEXT, ctx
    try:
        yield
    finally:
        _CONTEXT = prev


def get_forward_context() -> ForwardContext:
    if _CONTEXT is None:
        raise RuntimeError("model forward called outside set_forward_context()")
    return _CONTEXT
