"""The one per-step forward context: what layers read besides their inputs (caches, metadata, backends)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from vllm.attention.backend import AttentionBackend
from vllm.model_executor.layers.backends.base import MoEGemmBackend
from vllm.model_executor.layers.backends.torch_backend import TorchMoEGemmBackend

if TYPE_CHECKING:
    from vllm.attention.metadata import AttentionMetadata
    from vllm.core.kv_cache.paged_rows import LayerCaches


@dataclass
class ForwardContext:
    kv_caches: list["LayerCaches"]
    """Per-layer paged cache tensors, indexed by layer id."""
    attn_backend: AttentionBackend
    attn_metadata: "AttentionMetadata"
    """This step's slots and candidate lists, built once per step and shared by all layers."""
    moe_gemm: MoEGemmBackend = field(default_factory=TorchMoEGemmBackend)
    """Linears, router, MoE and mHC ops."""


_CONTEXT: ForwardContext | None = None


@contextmanager
def set_forward_context(ctx: ForwardContext) -> Iterator[None]:
    global _CONTEXT
    prev, _CONTEXT = _CONTEXT, ctx
    try:
        yield
    finally:
        _CONTEXT = prev


_REFERENCE_OPS = TorchMoEGemmBackend()  # stateless: the references, for layers used outside a forward


def current_moe_gemm_backend() -> MoEGemmBackend:
    """The step's MoE/GEMM backend; the torch references outside a forward context (unit use of a layer)."""
    return _REFERENCE_OPS if _CONTEXT is None else _CONTEXT.moe_gemm


def get_forward_context() -> ForwardContext:
    if _CONTEXT is None:
        raise RuntimeError("model forward called outside set_forward_context()")
    return _CONTEXT
