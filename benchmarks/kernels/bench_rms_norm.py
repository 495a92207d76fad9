"""RMSNorm at DeepSeek V4-Flash shapes: the one-launch Triton norm vs the torch reference, with roofline.

The norms of a layer: the attention and ffn inputs (hidden 4096, weighted), the q latent (1024) and the
kv latent (512, weighted) and the per-head q norm (64 heads x 512, weightless). Every Triton result is
checked against rms_norm_ref first; both are timed as CUDA graph replays (the reference is about ten
launches; a graph hides their host cost, so eager use costs it more). Bytes: x read and the output
written once, plus the weight.

    PYTHONPATH=. python benchmarks/kernels/bench_rms_norm.py --out benchmarks/results/h200_rms_norm.json
    PYTHONPATH=. python benchmarks/kernels/bench_rms_norm.py --quick --out /tmp/rms.json   # CPU: checks only
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

if not torch.cuda.is_available():  # Triton's CPU interpreter; must be set before the kernels are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")


from vllm.kernels import rms_norm as rn  # noqa: E402
from benchmarks.kernels.common import write_results  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402

# name -> (rows per token, D, weighted)
NORMS = {"hidden": (1, 4096, True), "q_latent": (1, 1024, True), "kv_latent": (1, 512, True),
         "q_heads": (64, 512, False)}
TOKENS = (1, 8, 32, 128, 1024, 4096)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="tiny token counts, correctness only without CUDA")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    bw = mm = None
    if cuda:
        from benchmarks.kernels.common import bench, ceilings, roofline
        bw, mm = ceilings()
    results, t0 = [], time.time()
    for name, (rows, d, weighted) in NORMS.items():
        for t in ((1, 3) if a.quick else TOKENS):
            g = torch.Generator().manual_seed(t)
            x = torch.randn(t * rows, d, generator=g).to(dev, torch.bfloat16)
            w = (1 + 0.1 * torch.randn(d, generator=g)).to(dev, torch.bfloat16) if weighted else None
            ref = rn.rms_norm_ref(x, w, 1e-6)
            assert_close(rn.rms_norm(x, w, 1e-6), ref, 1e-3, f"rms_norm {name}")
            row = {"op": "rms_norm", "norm": name, "tokens": t, "rows": t * rows, "dim": d, "weighted": weighted,
                   "launch": rn.launch_config(t * rows, d)}
            if cuda:
                us = bench(lambda: rn.rms_norm(x, w, 1e-6))
                ref_us = bench(lambda: rn.rms_norm_ref(x, w, 1e-6))
                nbytes = 2 * x.numel() * 2 + (d * 2 if weighted else 0)
                row.update(**roofline(us, nbytes, 0, bw, mm), torch_ref_us=round(ref_us, 2))
            results.append(row)
            print(json.dumps(row), flush=True)
    write_results(a.out, results, bw, mm, t0, "kernel and torch reference: median of CUDA graph replays",
                  dtype="bf16", eps=1e-6)


if __name__ == "__main__":
    main()
