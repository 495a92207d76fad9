"""DeepSeek V4 attention kernels at V4-Flash shapes: Triton vs the torch reference, with roofline.

Checks every Triton result against the reference before timing, then writes one JSON with the
device, shapes, median µs, achieved GB/s and TFLOP/s and the fraction of roofline (the larger of
bytes / bandwidth and FLOPs / matrix rate, from measured ceilings).

    python benchmarks/kernels/bench_attention.py --out benchmarks/results/h100_attention_kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from vllm.core.kv_cache.paged_rows import PagedRows
from vllm.core.kv_cache.specs import LayerTensorSpec
from vllm.kernels import compress_pool as cp
from vllm.kernels import fp8_ds_mla, indexer_topk as ix, sparse_attn as sa, sparse_attn_sm90 as sm90
from vllm.kernels import sparse_attn_sm90_fp8 as sm90_fp8
from vllm.kernels.testing import assert_close

from benchmarks.kernels.common import bench, ceilings, roofline, write_results

H, D, WINDOW, TOPK, HI, DI = 64, 512, 128, 512, 64, 128  # V4-Flash
CSA_RATIO, HCA_RATIO, BLOCK = 4, 128, 256
CONTEXTS, BATCHES = (4096, 32768, 131072), (1, 8, 32, 128)


def paged_cache(name: str, rows: int, width: int, block: int, layout) -> PagedRows:
    """`rows` random bf16 rows of `width` written at slots 0.. into paged storage (plain when layout
    is None, else quantized by the Triton insert)."""
    spec = LayerTensorSpec(0, name, block, width, torch.bfloat16, layout)
    cache = PagedRows(spec, -(-rows // block), torch.device("cuda"), fp8_insert=fp8_ds_mla.insert)
    for s in range(0, rows, 1 << 20):
        n = min(1 << 20, rows - s)
        cache.write(torch.randn(n, width, device="cuda", dtype=torch.bfloat16),
                    torch.arange(s, s + n, device="cuda"))
    return cache


def latent_cache(rows: int, fp8: bool) -> tuple[object, int]:
    """A paged latent cache of `rows` rows (random contents), and bytes per row."""
    layout = fp8_ds_mla.Fp8DsMlaLayout(block_size=BLOCK) if fp8 else None
    return paged_cache("swa", rows, D, BLOCK, layout), (layout.token_bytes if fp8 else 2 * D)


def decode_case(batch: int, context: int, kind: str, fp8: bool):
    """Per request: window rows [WINDOW] + compressed entries (top-k for CSA, all for HCA)."""
    n_entries = context // (CSA_RATIO if kind == "csa" else HCA_RATIO)
    k_comp = min(TOPK, n_entries) if kind == "csa" else n_entries
    swa, row_bytes = latent_cache(batch * WINDOW, fp8)
    comp, _ = latent_cache(batch * n_entries, fp8)
    win_idx = (torch.arange(batch, device="cuda")[:, None] * WINDOW + torch.arange(WINDOW, device="cuda"))
    pick = torch.rand(batch, n_entries, device="cuda").argsort(1)[:, :k_comp] if kind == "csa" else \
        torch.arange(n_entries, device="cuda").expand(batch, -1)
    comp_idx = pick + torch.arange(batch, device="cuda")[:, None] * n_entries
    q = torch.randn(batch, H, D, device="cuda", dtype=torch.bfloat16)
    sink = torch.randn(H, device="cuda")
    k = WINDOW + k_comp
    nbytes = batch * (k * (row_bytes + 8) + 2 * H * D * 2)
    flops = batch * 4 * H * D * k
    return q, [(swa, win_idx), (comp, comp_idx)], sink, nbytes, flops


def best_config(fn, ref, configs, what):
    """(µs, config) of the fastest launch override, each checked against the reference first."""
    best = None
    for cfg in configs:
        assert_close(fn(**cfg), ref, 1e-2, what)
        us = bench(lambda: fn(**cfg))
        print(f"  {what} {cfg}: {us:.1f} us", file=sys.stderr, flush=True)
        if best is None or us < best[0]:
            best = (us, cfg)
    return best


def time_default_kernel(q, sources, sink, scale, ref, configs, what) -> tuple[float, dict]:
    """(µs, what ran) on the kernel the default backend runs: `triton-sm90` on Hopper runs its Gluon kernel
    where that takes the call (the portable kernel's best time goes next to it), else the portable kernel
    at its best of `configs`."""
    us, cfg = best_config(lambda **c: sa.sparse_attn(q, sources, sink, scale, **c), ref, configs, what)
    if not sm90.takes(q, sources):
        return us, {"kernel": "portable", "config": cfg}
    sm90_us, _ = best_config(lambda: sm90.sparse_attn_sm90(q, sources, sink, scale), ref, [{}], what + " sm90")
    fp8 = getattr(sources[0][0], "layout", None) is not None
    ran = sm90_fp8 if fp8 else sm90  # the module whose kernel took the call, with its ring
    return sm90_us, {"kernel": "sm90_fp8" if fp8 else "sm90", "config": dict(block_k=ran.BLOCK_K, num_buf=ran.NUM_BUF),
                     "portable_us": round(us, 2)}


def run_decode(results, bw, mm, configs, contexts, batches, kinds):
    """Each case on the kernel the default backend runs (`time_default_kernel`)."""
    for fp8 in (True, False):
        for kind in kinds:
            for context in contexts:
                for batch in batches:
                    row = decode_row(batch, context, kind, fp8, bw, mm, configs)
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    torch.cuda.empty_cache()  # the case's tensors went with decode_row's frame


def decode_row(batch, context, kind, fp8, bw, mm, configs) -> dict:
    q, sources, sink, nbytes, flops = decode_case(batch, context, kind, fp8)
    scale = D**-0.5
    ref = sa.sparse_attn_ref(q, sources, sink, scale)
    us, kernel = time_default_kernel(q, sources, sink, scale, ref, configs, f"sparse_attn {kind} {context} {batch}")
    ref_us = bench(lambda: sa.sparse_attn_ref(q, sources, sink, scale), graph=False)
    return {"op": "sparse_attn_decode", "kv": "fp8_ds_mla" if fp8 else "bf16", "layer": kind, "context": context,
            "batch": batch, "rows_per_query": sources[0][1].shape[1] + sources[1][1].shape[1], **kernel,
            **roofline(us, nbytes, flops, bw, mm), "torch_ref_us": round(ref_us, 1)}


def run_prefill(results, bw, mm, configs):
    """One 4096-token chunk of a 32K-context request: each query reads window + top-k rows."""
    t, context = 4096, 32768
    for fp8 in (True, False):
        swa, row_bytes = latent_cache(context, fp8)
        comp, _ = latent_cache(context // CSA_RATIO, fp8)
        pos = torch.arange(context - t, context, device="cuda")
        win_idx = pos[:, None] - torch.arange(WINDOW - 1, -1, -1, device="cuda")[None, :]
        comp_idx = torch.randint(0, context // CSA_RATIO, (t, TOPK), device="cuda")
        sources = [(swa, win_idx), (comp, comp_idx)]
        q = torch.randn(t, H, D, device="cuda", dtype=torch.bfloat16)
        sink = torch.randn(H, device="cuda")
        ref = sa.sparse_attn_ref(q, sources, sink, D**-0.5)
        us, kernel = time_default_kernel(q, sources, sink, D**-0.5, ref, configs, "sparse_attn prefill")
        ref_us = bench(lambda: sa.sparse_attn_ref(q, sources, sink, D**-0.5), graph=False)
        k = WINDOW + TOPK
        nbytes = (context + context // CSA_RATIO) * row_bytes + t * (k * 8 + 2 * H * D * 2)  # rows read once (L2)
        row = {"op": "sparse_attn_prefill", "kv": "fp8_ds_mla" if fp8 else "bf16", "tokens": t, "context": context,
               **kernel, **roofline(us, nbytes, t * 4 * H * D * k, bw, mm), "torch_ref_us": round(ref_us, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)


def index_keys(rows: int, fp8: bool) -> tuple[object, int]:
    """`rows` random indexer keys: a bf16 tensor, or FP8 pages (`fp8_key_layout`); bytes per key."""
    if not fp8:
        return torch.randn(rows, DI, device="cuda", dtype=torch.bfloat16), 2 * DI
    layout = fp8_ds_mla.fp8_key_layout(DI, BLOCK // CSA_RATIO)
    return paged_cache("index_keys", rows, DI, layout.block_size, layout), layout.token_bytes


def run_indexer(results, bw, mm, contexts, batches):
    for fp8 in (False, True):
        for context in contexts:
            for batch in batches:
                row = indexer_row(batch, context, fp8, bw, mm)
                results.append(row)
                print(json.dumps(row), flush=True)
                torch.cuda.empty_cache()  # the case's tensors went with indexer_row's frame


def indexer_row(batch, context, fp8, bw, mm) -> dict:
    """One query per request over all its entries; scores checked against the reference, the chosen entries
    against torch.topk over the same scores (their multiset of scores: ties may pick other entries)."""
    n = context // CSA_RATIO
    keys, key_bytes = index_keys(batch * n, fp8)
    entry = torch.arange(batch * n, device="cuda").view(batch, n)  # request b's entry j at slot b * n + j
    req = torch.arange(batch, device="cuda")
    vis = torch.full((batch,), n, device="cuda")
    q = torch.randn(batch, HI, DI, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(batch, HI, device="cuda")
    args = (q, w, keys, entry, req, vis)
    scores = ix.indexer_scores(*args, DI**-0.5)
    assert_close(scores, ix.indexer_scores_ref(*args, DI**-0.5), 1e-2, "indexer scores")
    chosen = ix.indexer_topk(*args, TOPK, DI**-0.5) - entry[:, :1]
    best = scores.topk(min(TOPK, n), dim=-1).values
    assert torch.equal(scores.gather(1, chosen).sort(1).values, best.sort(1).values), "indexer top-k"
    s_us = bench(lambda: ix.indexer_scores(*args, DI**-0.5))
    k_us = bench(lambda: ix.indexer_topk(*args, TOPK, DI**-0.5))
    ref_us = (bench(lambda: ix.indexer_topk_ref(*args, TOPK, DI**-0.5), graph=False)
              if batch * n <= 1 << 22 else None)
    nbytes = batch * n * (key_bytes + 8 + 4)  # key, entry slot, score
    return {"op": "indexer_topk_decode", "keys": "fp8" if fp8 else "bf16", "context": context, "batch": batch,
            "entries": n, "scores_kernel": roofline(s_us, nbytes, batch * 2 * HI * DI * n, bw, mm),
            "with_topk_us": round(k_us, 2), "torch_ref_us": None if ref_us is None else round(ref_us, 1)}


def run_small(results, bw, mm):
    for batch in BATCHES:
        kv = torch.randn(batch, D, device="cuda", dtype=torch.bfloat16)
        layout = fp8_ds_mla.Fp8DsMlaLayout(block_size=BLOCK)
        cache = torch.zeros(-(-4096 // BLOCK), layout.page_bytes, dtype=torch.uint8, device="cuda")
        slots = torch.randperm(4096, device="cuda")[:batch]
        us = bench(lambda: fp8_ds_mla.insert(cache, kv, slots, layout))
        ref_us = bench(lambda: fp8_ds_mla.insert_ref(cache, kv, slots, layout), graph=False)
        row = {"op": "fp8_ds_mla_insert", "tokens": batch,
               **roofline(us, batch * (2 * D + layout.token_bytes), 0, bw, mm), "torch_ref_us": round(ref_us, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
        for ratio, overlap in ((CSA_RATIO, True), (HCA_RATIO, False)):
            width = (2 if overlap else 1) * D
            state = torch.randn(batch * 2 * ratio, 2 * width, device="cuda")
            win = torch.arange(batch * ratio, device="cuda").view(batch, ratio)
            prev = (win + batch * ratio) if overlap else None
            weight = torch.ones(D, device="cuda", dtype=torch.bfloat16)
            ang = torch.rand(batch, 32, device="cuda")
            args = (state, win, prev, weight, 1e-6, ang.cos(), ang.sin(), torch.bfloat16)
            assert_close(cp.compress_entries(*args), cp.compress_entries_ref(*args), 1e-2)
            us = bench(lambda: cp.compress_entries(*args))
            ref_us = bench(lambda: cp.compress_entries_ref(*args), graph=False)
            cand = ratio * (2 if overlap else 1)
            row = {"op": "compress_entries", "ratio": ratio, "overlap": overlap, "entries": batch,
                   **roofline(us, batch * (cand * 2 * D * 4 + D * 2), 0, bw, mm), "torch_ref_us": round(ref_us, 1)}
            results.append(row)
            print(json.dumps(row), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ops", default="decode,prefill,indexer,small")
    ap.add_argument("--configs", default="[{}]", help="JSON list of sparse_attn launch overrides to try")
    ap.add_argument("--quick", action="store_true",
                    help="decode at 32K context, batch 1/32/128, CSA only; indexer at 32K/128K, batch 1/128")
    ap.add_argument("--batches", default=None, help="comma-separated decode batch sizes (overrides the defaults)")
    a = ap.parse_args()
    torch.manual_seed(0)
    bw, mm = ceilings()
    results = []
    t0 = time.time()
    ops = a.ops.split(",")
    if "small" in ops:
        run_small(results, bw, mm)
    if "indexer" in ops:
        run_indexer(results, bw, mm, (32768, 131072) if a.quick else CONTEXTS, (1, 128) if a.quick else BATCHES)
    configs = json.loads(a.configs)
    if "prefill" in ops:
        run_prefill(results, bw, mm, configs)
    if "decode" in ops:
        batches = tuple(int(b) for b in a.batches.split(",")) if a.batches else (1, 32, 128) if a.quick else BATCHES
        run_decode(results, bw, mm, configs, (32768,) if a.quick else CONTEXTS, batches,
                   ("csa",) if a.quick else ("csa", "hca"))
    write_results(a.out, results, bw, mm, t0,
                  "kernels: median of CUDA graph replays; torch references: median of eager calls (CUDA events)",
                  shapes={"heads": H, "latent": D, "window": WINDOW, "topk": TOPK, "index_heads": HI,
                          "index_dim": DI, "csa_ratio": CSA_RATIO, "hca_ratio": HCA_RATIO})


if __name__ == "__main__":
    main()
