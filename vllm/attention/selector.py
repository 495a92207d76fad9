"""Backend registry and selection: a priority list per platform, first supported wins, override by name."""

from __future__ import annotations

import logging

import torch

from vllm.attention.backend import AttentionBackend
from vllm.attention.backends.torch_backend import TorchAttentionBackend
from vllm.attention.backends.triton_backend import TritonAttentionBackend

logger = logging.getLogger("vllm.attention")

_REGISTRY: dict[str, type[AttentionBackend]] = {b.name: b for b in (TorchAttentionBackend, TritonAttentionBackend)}
# Preference per device type. Every CUDA GPU from SM 8.0 (SM12x included) resolves to `triton`;
# `torch` (the references) is the fallback that runs anywhere.
_PRIORITY: dict[str, tuple[str, ...]] = {"cpu": ("torch",), "cuda": ("triton", "torch")}


def registered_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_attention_backend(device: torch.device, override: str | None = None,
                          kv_cache_dtype: str = "auto") -> AttentionBackend:
    """Pick the backend for `device` and KV cache dtype (or validate `override`) and log why."""
    if override is not None:
        if override not in _REGISTRY:
            raise ValueError(f"unknown attention backend {override!r}; valid: {registered_backends()}")
        reason = _REGISTRY[override].unsupported_reason(device, kv_cache_dtype)
        if reason:
            raise ValueError(f"attention backend {override!r} cannot run on {device} "
                             f"(kv_cache_dtype={kv_cache_dtype}): {reason}")
        logger.info("Using attention backend %r (requested)", override)
        return _REGISTRY[override]()
    skipped = []
    for name in _PRIORITY.get(device.type, ("torch",)):
        reason = _REGISTRY[name].unsupported_reason(device, kv_cache_dtype)
        if reason is None:
            logger.info("Using attention backend %r on %s%s", name, device,
                        "" if not skipped else f" (skipped: {'; '.join(skipped)})")
            return _REGISTRY[name]()
        skipped.append(f"{name}: {reason}")
    raise RuntimeError(f"no attention backend supports {device}: {'; '.join(skipped)}")
