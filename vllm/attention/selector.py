"""Backend registry and selection: a priority list per platform, first supported wins, override by name."""

from __future__ import annotations

import logging

import torch

from vllm.attention.backend import AttentionBackend
from vllm.attention.backends.torch_backend import TorchAttentionBackend
from vllm.attention.backends.triton_backend import TritonAttentionBackend
from vllm.attention.backends.triton_sm90_backend import TritonSm90AttentionBackend
from vllm.backend_selection import pick_backend

logger = logging.getLogger("vllm.attention")

_REGISTRY: dict[str, type[AttentionBackend]] = {
    b.name: b for b in (TorchAttentionBackend, TritonAttentionBackend, TritonSm90AttentionBackend)}
# Preference per device type. Hopper resolves to `triton-sm90` (its Gluon decode kernel, the portable
# kernels for the rest); every other CUDA GPU from SM 8.0 (SM12x included) to `triton`; `torch` (the
# references) is the fallback that runs anywhere.
_PRIORITY: dict[str, tuple[str, ...]] = {"cpu": ("torch",), "cuda": ("triton-sm90", "triton", "torch")}


def registered_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_attention_backend(device: torch.device, override: str | None = None,
                          kv_cache_dtype: str = "auto") -> AttentionBackend:
    """Pick the backend for `device` and KV cache dtype (or validate `override`) and log why."""
    return pick_backend("attention", _REGISTRY, _PRIORITY, device, override, (kv_cache_dtype,),
                        f"kv_cache_dtype={kv_cache_dtype}", logger)()
