"""Backend registry and selection: a priority list per platform, first supported wins, override by name."""

from __future__ import annotations

import logging

import torch

from vllm.attention.backend import AttentionBackend
from vllm.attention.backends.torch_backend import TorchAttentionBackend

logger = logging.getLogger("vllm.attention")

_REGISTRY: dict[str, type[AttentionBackend]] = {TorchAttentionBackend.name: TorchAttentionBackend}
# Preference per device type; the Triton backend joins the CUDA list with its kernels.
_PRIORITY: dict[str, tuple[str, ...]] = {"cpu": ("torch",), "cuda": ("torch",)}


def registered_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_attention_backend(device: torch.device, override: str | None = None) -> AttentionBackend:
    """Pick the backend for `device` (or validate `override`) and log why."""
    if override is not None:
        if override not in _REGISTRY:
            raise ValueError(f"unknown attention backend {override!r}; valid: {registered_backends()}")
        reason = _REGISTRY[override].unsupported_reason(device)
        if reason:
            raise ValueError(f"attention backend {override!r} cannot run on {device}: {reason}")
        logger.info("Using attention backend %r (requested)", override)
        return _REGISTRY[override]()
    skipped = []
    for name in _PRIORITY.get(device.type, ("torch",)):
        reason = _REGISTRY[name].unsupported_reason(device)
        if reason is None:
            logger.info("Using attention backend %r on %s%s", name, device,
                        "" if not skipped else f" (skipped: {'; '.join(skipped)})")
            return _REGISTRY[name]()
        skipped.append(f"{name}: {reason}")
    raise RuntimeError(f"no attention backend supports {device}: {'; '.join(skipped)}")
