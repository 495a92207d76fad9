"""Shared benchmark helpers: measured ceilings, CUDA-graph timing, roofline fractions, the results file."""

from __future__ import annotations

import json
import time

import torch
import triton


def ceilings() -> tuple[float, float]:
    """Measured copy bandwidth (bytes read + written per s) and bf16 matmul rate (FLOP/s)."""
    return _copy_rate(), _matmul_rate()


def _copy_rate() -> float:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / (triton.testing.do_bench(lambda: y.copy_(x), return_mode="median") * 1e-3)


def _matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / (triton.testing.do_bench(lambda: a @ a, return_mode="median") * 1e-3)


def bench(fn, graph: bool = True) -> float:
    """Median µs. Kernels: replays of a CUDA graph (no host launch gaps, per METHOD). Torch references
    (some sync with the host, so they cannot be captured): CUDA events around eager calls.

    Waits for the device first: Triton's graph timer runs fn on a fresh stream that does not wait for the
    current one, so inputs still being written there (a cache's inserts, indices built just before) would
    be read unwritten by fn's first eager calls: stale indices from reused memory gather from wild
    addresses (the illegal-address faults of stops 24-25, in scripts that timed before any sync)."""
    torch.cuda.synchronize()
    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


ROTATE_BYTES = 256 << 20  # several times any Hopper L2 (50-60 MB): rotated operands come from HBM


def rotation_copies(nbytes: int, cap: int = 128) -> int:
    """How many copies of an operand of `nbytes` to cycle through so none of them stays L2-resident."""
    return max(1, min(cap, -(-ROTATE_BYTES // nbytes)))


def bench_rotating(calls: list) -> float:
    """Median µs of one call, each graph replay running every call once (each on its own operand copy)."""
    return bench(lambda: [c() for c in calls]) / len(calls)


def roofline(us: float, nbytes: float, flops: float, bw: float, mm: float) -> dict:
    floor = max(nbytes / bw, flops / mm) * 1e6
    return {"us": round(us, 2), "GB/s": round(nbytes / us / 1e3, 1), "TFLOP/s": round(flops / us / 1e6, 2),
            "roofline_us": round(floor, 2), "fraction_of_roofline": round(floor / us, 3),
            "bound": "memory" if nbytes / bw >= flops / mm else "compute"}


def write_results(path: str, results: list, bw: float | None, mm: float | None, t0: float, timing: str,
                  **fields) -> None:
    """The results JSON every kernel benchmark writes: device, versions, the measured ceilings (None when
    untimed: the CPU interpreter), the benchmark's own fields (shapes, ...), how it timed, its seconds."""
    doc = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter, untimed)",
           "torch": torch.__version__, "triton": triton.__version__,
           "ceilings": {"copy_bytes_per_s": bw, "bf16_matmul_flop_per_s": mm} if bw else None,
           **fields, "timing": timing, "seconds": round(time.time() - t0, 1), "results": results}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
