"""Triton import point for the kernel modules.

Without Triton (a CPU install) the modules still import, so their torch references serve the
`torch` backend; a kernel launched anyway says how to get Triton. The `triton` backend reports
itself unsupported in that case, so the selector never picks it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised on installs without triton
    HAS_TRITON = False

    class OutOfResources(Exception):
        """Triton's error for a kernel too large for the GPU (never raised without Triton)."""

    class _Missing:
        """Stands in for `triton` / `tl` so kernel definitions (decorators, annotations) still evaluate."""

        def __getattr__(self, name):
            return _Missing()

        def __call__(self, *args, **kwargs):
            if args and callable(args[0]) and len(args) == 1:
                return _Missing()  # used as a decorator
            raise RuntimeError("this kernel needs Triton: pip install triton (CUDA GPUs; TRITON_INTERPRET=1 on CPU)")

        def __getitem__(self, grid):
            return self

    triton = _Missing()
    tl = _Missing()


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, a Triton debugging knob)."""
    return HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def max_shared_memory(device: torch.device) -> int:
    """Shared memory one program may use on `device` (bytes; opt-in maximum). SM12x GPUs have ~100 KB where
    Hopper has 227 KB, so pipelining depths are sized from this. The CPU interpreter has no limit."""
    if device.type != "cuda":
        return 1 << 30
    return _cuda_max_shared_memory(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_max_shared_memory(index: int) -> int:  # a driver query: once per device, not per launch
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


R = TypeVar("R")

# (launcher's key) -> position of the first configuration the GPU fitted, when that was not the first: a
# fact about the device, so a launch that had to fall back goes straight there next time.
_FIRST_FITTING: dict[Hashable, int] = {}


def launch_first_fitting(launch: Callable[[dict], R], configs: Iterable[dict], key: Hashable) -> R:
    """`launch(cfg)` with the first of `configs` whose kernel fits the GPU. Triton raises
    OutOfResources before running a kernel that needs more shared memory or registers than the
    device has. The defaults are tuned on Hopper; SM12x GPUs have under half its shared memory per
    program, so each launcher lists ever smaller configurations after its default (lazily: where the
    default fits, nothing else is built). `key` names what besides the configuration selects the
    compiled kernel (device, dtypes, formats, the configurations' origin)."""
    start = _FIRST_FITTING.get(key, 0)
    tried, last = [], None
    for i, cfg in enumerate(configs):
        if i < start:
            continue
        tried.append(cfg)
        try:
            out = launch(cfg)
        except OutOfResources as err:
            last = err
            continue
        if i != start:
            _FIRST_FITTING[key] = i
        return out
    raise RuntimeError(f"no launch configuration fits this GPU ({last}); tried {tried}") from last


def dot_precision(dtype) -> str:
    """`tl.dot` input precision: fp32 operands get true fp32 (an fp32 model must not silently run tf32)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def triton_unsupported_reason(device, fp8: str | None = None) -> str | None:
    """Why the Triton kernels cannot run on `device` (None if they can): Triton installed, a CUDA
    GPU of compute capability >= 8.0 (bf16 tensor cores), >= 8.9 when `fp8` names something that
    needs the e4m3 conversion; on a CPU only in the interpreter."""
    if not HAS_TRITON:
        return "triton is not installed"
    if device.type == "cpu":
        return None if interpreting() else "runs on CUDA GPUs (on a CPU only under TRITON_INTERPRET=1)"
    if device.type != "cuda":
        return f"runs on CUDA GPUs, not {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 0):
        return f"needs compute capability >= 8.0, this GPU is {cap[0]}.{cap[1]}"
    if fp8 and cap < (8, 9):
        return f"{fp8} needs compute capability >= 8.9 (e4m3 conversion), this GPU is {cap[0]}.{cap[1]}"
    return None
