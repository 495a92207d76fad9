"""MoE/GEMM backend registry and selection: a priority list per platform, first supported wins,
override by name (`--moe-backend`). Mirrors the attention selector."""

from __future__ import annotations

import logging

import torch

from vllm.model_executor.layers.backends.base import MoEGemmBackend
from vllm.model_executor.layers.backends.torch_backend import TorchMoEGemmBackend
from vllm.model_executor.layers.backends.triton_backend import TritonMoEGemmBackend

logger = logging.getLogger("vllm.moe_gemm")

_REGISTRY: dict[str, type[MoEGemmBackend]] = {b.name: b for b in (TorchMoEGemmBackend, TritonMoEGemmBackend)}
# Every CUDA GPU from SM 8.0 (SM12x included) resolves to `triton`; `torch` runs anywhere.
_PRIORITY: dict[str, tuple[str, ...]] = {"cpu": ("torch",), "cuda": ("triton", "torch")}


def registered_moe_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_moe_gemm_backend(device: torch.device, override: str | None = None,
                         weight_formats: frozenset[str] = frozenset(),
                         fuse_shared_experts: bool = True) -> MoEGemmBackend:
    """Pick the backend for `device` and the checkpoint's weight formats (or validate `override`)."""
    if override is not None:
        if override not in _REGISTRY:
            raise ValueError(f"unknown MoE/GEMM backend {override!r}; valid: {registered_moe_backends()}")
        reason = _REGISTRY[override].unsupported_reason(device, weight_formats)
        if reason:
            raise ValueError(f"MoE/GEMM backend {override!r} cannot run on {device} "
                             f"(weights {sorted(weight_formats)}): {reason}")
        logger.info("Using MoE/GEMM backend %r (requested)", override)
        return _REGISTRY[override](fuse_shared_experts)
    skipped = []
    for name in _PRIORITY.get(device.type, ("torch",)):
        reason = _REGISTRY[name].unsupported_reason(device, weight_formats)
        if reason is None:
            logger.info("Using MoE/GEMM backend %r on %s%s", name, device,
                        "" if not skipped else f" (skipped: {'; '.join(skipped)})")
            return _REGISTRY[name](fuse_shared_experts)
        skipped.append(f"{name}: {reason}")
    raise RuntimeError(f"no MoE/GEMM backend supports {device}: {'; '.join(skipped)}")
