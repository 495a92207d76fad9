"""MoE/GEMM backend registry and selection: a priority list per platform, first supported wins,
override by name (`--moe-backend`). Mirrors the attention selector."""

from __future__ import annotations

import logging

import torch

from vllm.backend_selection import pick_backend
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
    return pick_backend("MoE/GEMM", _REGISTRY, _PRIORITY, device, override, (weight_formats,),
                        f"weights {sorted(weight_formats)}", logger)(fuse_shared_experts)
