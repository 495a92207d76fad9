"""DeepSeek V4 MoE router at V4-Flash shapes: the one-launch Triton router vs the torch reference.

Top-k layers (sqrt-softplus, bias, x1.5) and hash layers, T = 1 .. 4096 tokens. Every Triton
result is checked against router_ref first (ids exactly where the reference scores are not a
rounding hair apart, weights to 1e-4), then timed as CUDA graph replays; the torch reference is
timed eagerly. Bytes (gate weight + x + outputs) and FLOPs (2 T D E) give the roofline.
`--after-norm T,...` also times the router where the model runs it, after the ffn RMSNorm (torch
norm, Triton norm, and `norm_router`'s single launch).

    PYTHONPATH=. python benchmarks/kernels/bench_router.py --out benchmarks/results/h100_router.json
    PYTHONPATH=. python benchmarks/kernels/bench_router.py --tokens 1 --after-norm 1 --out /tmp/router_t1.json
    PYTHONPATH=. python benchmarks/kernels/bench_router.py --quick --out /tmp/router.json   # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():  # dry run in Triton's interpreter; set before the kernels are imported
    os.environ.setdefault("TRITON_INTERPRET", "1")


from vllm.kernels import moe_router as mr  # noqa: E402
from benchmarks.kernels.common import write_results  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402

D, E, K, SCALING, VOCAB = 4096, 256, 6, 1.5, 129280  # V4-Flash
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
QUICK = dict(d=200, e=24, vocab=100, tokens=(1, 5, 37))  # CPU: tiny shapes, E not a power of two


def case(t: int, hash_layer: bool, d: int, e: int, vocab: int, dev: torch.device, seed: int = 0):
    """(args, kwargs) of one router call: bf16 x and gate weight, fp32 bias near Flash's ~8.08."""
    g = torch.Generator(device=dev).manual_seed(seed + t)
    x = torch.randn(t, d, generator=g, device=dev).to(torch.bfloat16)
    w = (torch.randn(e, d, generator=g, device=dev) * d**-0.5).to(torch.bfloat16)
    if hash_layer:
        tid2eid = torch.rand(vocab, e, generator=g, device=dev).argsort(1)[:, :K].contiguous()  # int64, distinct
        ids = torch.randint(0, vocab, (t,), generator=g, device=dev)
        args = (x, w, None, tid2eid, ids)
    else:
        bias = 8.08 + 0.05 * torch.randn(e, generator=g, device=dev)
        args = (x, w, bias, None, None)
    return args, dict(top_k=K, score_func="sqrtsoftplus", renormalize=True, scaling=SCALING)


def check(out, ref, args) -> float:
    """ids equal on every token whose reference selection is not a rounding hair from a tie (>= 90% of
    them), weights to 1e-4 there; returns the fraction of tokens checked exactly."""
    (w, ids), (w_ref, ids_ref) = out, ref
    x, gate, bias, tid2eid, _ = args
    if tid2eid is None:
        sel = torch.sqrt(torch.nn.functional.softplus(x.float() @ gate.float().T)) + bias
        top = sel.sort(-1, descending=True).values[:, :K + 1]
        gaps = top[:, :-1] - top[:, 1:]
        clear = ~((gaps > 0) & (gaps <= 1e-5)).any(1)
    else:
        clear = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    frac = clear.float().mean().item()
    assert frac >= 0.9, f"only {frac:.2f} of the tokens have an unambiguous selection"
    assert torch.equal(ids[clear], ids_ref[clear]), "expert ids differ from the reference"
    assert_close(w[clear], w_ref[clear], 1e-4, "routing weights")
    return frac


def run(results, tokens, d, e, vocab, configs, bw, mm):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for hash_layer in (False, True):
        for t in tokens:
            args, kw = case(t, hash_layer, d, e, vocab, dev)
            ref = mr.router_ref(*args, **kw)
            best = None
            for cfg in configs:
                frac = check(mr.router(*args, **kw, **cfg), ref, args)
                if bw is None:
                    continue
                us = bench(lambda: mr.router(*args, **kw, **cfg))
                print(f"  router {'hash' if hash_layer else 'topk'} T={t} {cfg}: {us:.2f} us", file=sys.stderr,
                      flush=True)
                if best is None or us < best[0]:
                    best = (us, cfg)
            row = {"op": "moe_router", "layer": "hash" if hash_layer else "topk", "tokens": t,
                   "launch": mr.launch_config(t, e, d, torch.cuda.get_device_properties(dev).multi_processor_count
                                              if dev.type == "cuda" else 4),
                   "exact_id_fraction": round(frac, 3)}
            if bw is not None:
                nbytes = e * d * 2 + t * d * 2 + t * K * 8 + (t * K * 8 if hash_layer else e * 4)
                ref_us = bench(lambda: mr.router_ref(*args, **kw), graph=False)
                row.update(config=best[1], **roofline(best[0], nbytes, 2 * t * d * e, bw, mm),
                           torch_ref_us=round(ref_us, 2))
            results.append(row)
            print(json.dumps(row), flush=True)


def run_after_norm(results, tokens, d, e, vocab):
    """The router where the model runs it: right after the ffn RMSNorm, in one CUDA graph. Its cost there
    is the pair's time less the norm's: after the torch norm (about ten launches), after the Triton norm,
    and fused with it (`norm_router`: one launch at one token), each checked against norm_router_ref."""
    from vllm.kernels import rms_norm as rn
    dev = torch.device("cuda")
    norm_w = (1 + 0.1 * torch.randn(d, device=dev)).to(torch.bfloat16)
    for t in tokens:
        args, kw = case(t, False, d, e, vocab, dev)
        x, rest = args[0], args[1:]
        ref = mr.norm_router_ref(x, norm_w, 1e-6, *rest, **kw)
        got = mr.norm_router(x, norm_w, 1e-6, *rest, **kw)
        assert_close(got[0], ref[0], 1e-3, "normed x")
        check(got[1:], ref[1:], (ref[0], *rest))
        pairs = {"torch": (rn.rms_norm_ref, lambda: mr.router(rn.rms_norm_ref(x, norm_w, 1e-6), *rest, **kw)),
                 "triton": (rn.rms_norm, lambda: mr.router(rn.rms_norm(x, norm_w, 1e-6), *rest, **kw)),
                 "triton_fused": (rn.rms_norm, lambda: mr.norm_router(x, norm_w, 1e-6, *rest, **kw))}
        for name, (norm, pair) in pairs.items():
            norm_us = bench(lambda: norm(x, norm_w, 1e-6))
            pair_us = bench(pair)
            row = {"op": "moe_router_after_rmsnorm", "layer": "topk", "tokens": t, "norm": name,
                   "norm_us": round(norm_us, 2), "norm_and_router_us": round(pair_us, 2),
                   "router_marginal_us": round(pair_us - norm_us, 2)}
            results.append(row)
            print(json.dumps(row), flush=True)


def main():
    global bench, roofline
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, correctness only without CUDA (CPU dry run)")
    ap.add_argument("--configs", default="[{}]", help="JSON list of router launch overrides to try")
    ap.add_argument("--tokens", default=None, help="comma-separated token counts (default: all)")
    ap.add_argument("--after-norm", default=None,
                    help="comma-separated token counts to also time right after the ffn RMSNorm (GPU only)")
    a = ap.parse_args()
    torch.manual_seed(0)
    bw = mm = None
    if torch.cuda.is_available():
        from benchmarks.kernels.common import bench, ceilings, roofline
        bw, mm = ceilings()
    shapes = QUICK if a.quick else dict(d=D, e=E, vocab=VOCAB, tokens=TOKENS)
    tokens = tuple(int(t) for t in a.tokens.split(",")) if a.tokens else shapes["tokens"]
    results = []
    t0 = time.time()
    run(results, tokens, shapes["d"], shapes["e"], shapes["vocab"], json.loads(a.configs), bw, mm)
    if a.after_norm and bw is not None:
        run_after_norm(results, [int(t) for t in a.after_norm.split(",")], shapes["d"], shapes["e"], shapes["vocab"])
    write_results(a.out, results, bw, mm, t0,
                  "kernel: median of CUDA graph replays; torch reference: median of eager calls (CUDA events)",
                  shapes={"hidden": shapes["d"], "experts": shapes["e"], "top_k": K, "scaling": SCALING,
                          "vocab": shapes["vocab"], "score_func": "sqrtsoftplus", "dtype": "bf16"})


if __name__ == "__main__":
    main()
