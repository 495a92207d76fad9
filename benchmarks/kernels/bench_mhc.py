"""mHC kernels (pre / post / head) at V4-Flash shapes: Triton vs the torch reference, with roofline.

Checks every Triton result against the reference before timing, then writes one JSON with the
device, shapes, median µs, achieved GB/s and the fraction of roofline. Bytes are the floor: each
input read once (pre/head read the streams twice by design: GEMM pass + mixing pass), each output
written once. Kernels are timed as CUDA graph replays; the references too where they capture.

    python benchmarks/kernels/bench_mhc.py --out benchmarks/results/h100_mhc.json
    python benchmarks/kernels/bench_mhc.py --out /tmp/mhc.json --quick   # tiny shapes; CPU: checks only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():  # Triton's CPU interpreter; must be set before the kernels are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")


from vllm.kernels import mhc  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402

from benchmarks.kernels.common import bench, ceilings, roofline, write_results  # noqa: E402

D, HC, ITERS, HC_EPS, NORM_EPS = 4096, 4, 20, 1e-6, 1e-6  # V4-Flash
TOKENS = (1, 8, 32, 128, 1024, 4096)
QUICK_D, QUICK_TOKENS = 96, (1, 3, 17)
# (post/comb fp32 outputs, stream-dtype outputs): tf32 mixes for bf16 streams
TOL = {torch.bfloat16: (5e-3, 1e-2), torch.float32: (1e-5, 1e-5)}


def make_case(t: int, d: int, hc: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Random streams/sub-layer output and pre/head parameters of realistic magnitude."""
    g = torch.Generator().manual_seed(seed)
    m = (2 + hc) * hc
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    streams = rnd(t, hc, d).to(device, dtype)
    case = {"streams": streams, "y": rnd(t, d).to(device, dtype),
            "fn": (rnd(m, hc * d) * 0.02).to(device), "base": rnd(m).to(device),
            "scale": (0.5 + 1.5 * torch.rand(3, generator=g)).to(device),
            "head_fn": (rnd(hc, hc * d) * 0.02).to(device), "head_base": rnd(hc).to(device),
            "head_scale": (0.5 + 1.5 * torch.rand(1, generator=g)).to(device)}
    return case


def ops(c: dict, **cfg) -> dict:
    """name -> (kernel call, reference call) over one case; `cfg` overrides pre/head launches."""
    pre_args = (c["streams"], c["fn"], c["base"], c["scale"], ITERS, HC_EPS, NORM_EPS)
    head_args = (c["streams"], c["head_fn"], c["head_base"], c["head_scale"], HC_EPS, NORM_EPS)
    _, post, comb = mhc.mhc_pre_ref(*pre_args)
    post_args = (c["y"], c["streams"], post, comb)
    return {"pre": (lambda: mhc.mhc_pre(*pre_args, **cfg), lambda: mhc.mhc_pre_ref(*pre_args)),
            "post": (lambda: mhc.mhc_post(*post_args), lambda: mhc.mhc_post_ref(*post_args)),
            "head": (lambda: mhc.mhc_head(*head_args, **cfg), lambda: mhc.mhc_head_ref(*head_args))}


def check(name: str, out, ref, dtype) -> list[float]:
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    tol32, tol = TOL[dtype]
    return [assert_close(a, r, tol if a.dtype == dtype else tol32, name) for a, r in zip(outs, refs)]


def traffic(op: str, t: int, d: int, hc: int, es: int) -> tuple[float, float]:
    """(floor bytes, FLOPs) of one call."""
    k, m = hc * d, (2 + hc) * hc
    if op == "pre":
        return t * k * es + m * k * 4 + t * d * es + t * (hc + hc * hc) * 4, 2 * t * m * k + 2 * t * k
    if op == "head":
        return t * k * es + hc * k * 4 + t * d * es, 2 * t * hc * k + 2 * t * k
    return t * d * es + 2 * t * k * es + t * (hc + hc * hc) * 4, 2 * t * hc * k + 3 * t * k


def time_ref(fn) -> tuple[float, bool]:
    """µs of a torch reference, as CUDA graph replays if it captures, else eager (CUDA events)."""
    try:
        return bench(fn), True
    except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager timing
        print(f"  reference did not capture ({type(e).__name__}); timing eager calls", file=sys.stderr)
        torch.cuda.synchronize()
        return bench(fn, graph=False), False


def profile(d: int, tokens, dtype, configs: list[dict]):
    """Per-kernel device µs (torch profiler, mean of 20 calls) of each op and launch override."""
    from torch.profiler import ProfilerActivity, profile as prof
    for t in tokens:
        case = make_case(t, d, HC, dtype, torch.device("cuda"), seed=t)
        for cfg in [{}] + configs:
            for name, (kernel, _) in ops(case, **cfg).items():
                kernel()
                torch.cuda.synchronize()
                with prof(activities=[ProfilerActivity.CUDA]) as p:
                    for _ in range(20):
                        kernel()
                    torch.cuda.synchronize()
                times = {e.key[:40]: round(e.device_time_total / e.count, 2) for e in p.key_averages()
                         if e.device_time_total > 0}
                print(f"profile {name} T={t} {cfg}: {times}", flush=True)


def run(results: list, d: int, tokens, dtype, configs: list[dict], timed: bool, bw: float, mm: float):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    es = torch.empty(0, dtype=dtype).element_size()
    for t in tokens:
        case = make_case(t, d, HC, dtype, device, seed=t)
        for name, (kernel, ref) in ops(case).items():
            r = ref()
            errs = check(f"{name} T={t}", kernel(), r, dtype)
            row = {"op": f"mhc_{name}", "tokens": t, "dim": d, "hc": HC, "dtype": str(dtype).split(".")[-1],
                   "rel_err": [float(f"{e:.3g}") for e in errs]}
            if timed:
                nbytes, flops = traffic(name, t, d, HC, es)
                us = bench(kernel)
                if name != "post":  # launch overrides of the split-K pre/head
                    row["default_us"] = round(us, 2)
                    for cfg in configs:
                        k_fn = ops(case, **cfg)[name][0]
                        check(f"{name} T={t} {cfg}", k_fn(), r, dtype)
                        cu = bench(k_fn)
                        print(f"  {name} T={t} {cfg}: {cu:.2f} us", file=sys.stderr, flush=True)
                        if cu < us:
                            us, row["config"] = cu, cfg
                ref_us, graphed = time_ref(ref)
                row.update(roofline(us, nbytes, flops, bw, mm), bytes=int(nbytes), torch_ref_us=round(ref_us, 2),
                           torch_ref_graph=graphed, speedup_vs_ref=round(ref_us / us, 2))
            results.append(row)
            print(json.dumps(row), flush=True)
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help=f"D={QUICK_D}, T in {QUICK_TOKENS}; without CUDA: "
                    "checks in Triton's interpreter, no timing")
    ap.add_argument("--tokens", default=None, help="comma-separated token counts (default: the V4 sweep)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--configs", default="[]",
                    help='JSON list of pre/head launch overrides to try, e.g. [{"num_splits": 32}]')
    ap.add_argument("--profile", action="store_true", help="per-kernel device times instead of the benchmark")
    a = ap.parse_args()
    torch.manual_seed(0)
    timed = torch.cuda.is_available()
    bw, mm = ceilings() if timed else (float("nan"), float("nan"))
    d, tokens = (QUICK_D, QUICK_TOKENS) if a.quick else (D, TOKENS)
    if a.tokens:
        tokens = tuple(int(x) for x in a.tokens.split(","))
    if a.profile:
        return profile(d, tokens, getattr(torch, a.dtype), json.loads(a.configs))
    results: list = []
    t0 = time.time()
    run(results, d, tokens, getattr(torch, a.dtype), json.loads(a.configs), timed, bw, mm)
    write_results(a.out, results, bw if timed else None, mm, t0,
                  "kernels: median of CUDA graph replays; torch references: graph replays where they capture, "
                  "else median of eager calls (CUDA events); bytes: each input read once, outputs written once",
                  shapes={"dim": d, "hc": HC, "sinkhorn_iters": ITERS, "hc_eps": HC_EPS, "norm_eps": NORM_EPS,
                          "pre_fn": [(2 + HC) * HC, HC * d], "head_fn": [HC, HC * d], "streams_dtype": a.dtype})


if __name__ == "__main__":
    main()
