"""DeepSeek V4 quantized linears and fused MoE at V4-Flash shapes: Triton vs references, with roofline.

Checks every Triton result against the torch reference first, then times it (CUDA graph replays)
next to: the torch reference (dequantize + fp32 matmul, eager), cuBLAS bf16 on the dequantized
weight, and `torch._scaled_mm` FP8 (per-row/column scales — a coarser quantization than DeepSeek's
blocks, shown as the hardware FP8 GEMM's speed). Linear weights are rotated past L2. Writes one JSON.

    PYTHONPATH=. python benchmarks/kernels/bench_moe_gemm.py --out benchmarks/results/h200_moe_gemm.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.kernels.common import (bench, bench_rotating, ceilings, roofline, rotation_copies,
                                       write_results)
from vllm.kernels import fused_moe as fm
from vllm.kernels.quant_gemm import FP8_BLOCK, MXFP4, QuantWeight, linear, linear_ref
from vllm.kernels.testing import assert_close
from vllm.model_executor.layers.quantization.formats import quant_fp8_block, quant_mxfp4

D, E, TOP_K, INTER, H, HEAD, Q_LORA, O_GROUPS, O_LORA, IDX_H, IDX_D = 4096, 256, 6, 2048, 64, 512, 1024, 8, 1024, 64, 128
LINEARS = {  # name: (out, in, groups) — the block-FP8 projections of one V4-Flash layer
    "wq_a": (Q_LORA, D, 1), "wkv": (HEAD, D, 1), "wq_b": (H * HEAD, Q_LORA, 1),
    "wo_a": (O_GROUPS * O_LORA, H * HEAD // O_GROUPS, O_GROUPS),  # K = inputs per group
    "wo_b": (D, O_GROUPS * O_LORA, 1), "shared_w1": (INTER, D, 1), "shared_w2": (D, INTER, 1),
    "indexer_wq_b": (IDX_H * IDX_D, Q_LORA, 1),
}
TOKENS = (1, 8, 32, 128, 1024, 4096)
MOE_BATCHES = (1, 8, 16, 32, 64, 128, 1024)


def fp8_weight(n: int, k: int) -> QuantWeight:
    q, s = quant_fp8_block(torch.randn(n, k, device="cuda") * 0.02)
    return QuantWeight(q, s, FP8_BLOCK, act_fp8=True)


def weight_bytes(w: QuantWeight) -> int:
    return w.weight.numel() * w.weight.element_size() + (0 if w.scale is None else w.scale.numel())


def run_linears(results, bw, mm, tokens, names):
    for name in names:
        n, k, groups = LINEARS[name]
        w = fp8_weight(n, k)
        # Cycle through copies of the weight so each call reads it from HBM, not a warm L2.
        copies = rotation_copies(weight_bytes(w))
        ws = [w] + [w._replace(weight=w.weight.clone(), scale=w.scale.clone()) for _ in range(copies - 1)]
        dense = [v.dense().to(torch.bfloat16) for v in ws[:rotation_copies(n * k * 2)]]
        rowwise = [d.to(torch.float8_e4m3fn) for d in dense[:rotation_copies(n * k)]]  # unit scales; speed only
        for m in tokens:
            x = torch.randn(m, groups, k, device="cuda", dtype=torch.bfloat16)  # k: inputs per group
            x = x if groups > 1 else x[:, 0]
            assert_close(linear(x, w, groups), linear_ref(x, w, groups), 1e-2, name)
            nbytes = weight_bytes(w) + x.numel() * 2 + m * n * 2
            flops = 2 * m * n * k
            us = bench_rotating([lambda v=v: linear(x, v, groups) for v in ws])
            row = {"op": "fp8_linear", "name": name, "tokens": m, "N": n, "K": k, "groups": groups,
                   "weight_copies_rotated": copies, "triton": roofline(us, nbytes, flops, bw, mm)}
            if groups == 1:
                row["cublas_bf16_us"] = round(bench_rotating([lambda d=d: x @ d.T for d in dense]), 2)
                if m % 16 == 0:
                    xs = x.to(torch.float8_e4m3fn)
                    one = torch.ones((), device="cuda")
                    row["scaled_mm_fp8_us"] = round(bench_rotating([lambda r=r: torch._scaled_mm(
                        xs, r.T, scale_a=one, scale_b=one, out_dtype=torch.bfloat16) for r in rowwise]), 2)
            if m <= 128:
                row["torch_ref_us"] = round(bench(lambda: linear_ref(x, w, groups), graph=False), 2)
            results.append(row)
            print(json.dumps(row), flush=True)


def moe_weights() -> tuple[fm.ExpertWeights, fm.ExpertWeights]:
    def stack(n, k):
        qs = [quant_mxfp4(torch.randn(n, k, device="cuda") * 0.02) for _ in range(E)]
        return QuantWeight(torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs]), MXFP4, act_fp8=True)

    routed = fm.ExpertWeights(stack(INTER, D), stack(INTER, D), stack(D, INTER))
    shared = fm.ExpertWeights(fp8_weight(INTER, D), fp8_weight(INTER, D), fp8_weight(D, INTER))
    return routed, shared


def run_moe(results, bw, mm, batches):
    routed, shared = moe_weights()
    per_expert = sum(weight_bytes(w) for w in routed) // E
    shared_bytes = sum(weight_bytes(w) for w in shared)
    for t in batches:
        x = torch.randn(t, D, device="cuda", dtype=torch.bfloat16)
        ids = torch.rand(t, E, device="cuda").argsort(1)[:, :TOP_K].to(torch.int32)
        w = torch.rand(t, TOP_K, device="cuda")
        ref = fm.fused_moe_ref(x, w, ids, routed, 10.0, shared)
        assert_close(fm.fused_moe(x, w, ids, routed, 10.0, shared), ref, 2e-2, f"moe t={t}")
        touched = torch.unique(ids).numel()
        nbytes = touched * per_expert + shared_bytes + 2 * t * D * 2
        flops = 2 * t * (TOP_K + 1) * 3 * D * INTER

        row = {"op": "fused_moe", "tokens": t, "experts_touched": touched,
               "fused_shared": roofline(bench(lambda: fm.fused_moe(x, w, ids, routed, 10.0, shared)), nbytes, flops,
                                        bw, mm),
               "unfused_shared_us": round(bench(lambda: fm.fused_moe(x, w, ids, routed, 10.0, shared,
                                                                     fuse_shared=False)), 2),
               "routed_only_us": round(bench(lambda: fm.fused_moe(x, w, ids, routed, 10.0)), 2),
               "gemm_form": "cuda-cores (moe_stream)" if t <= fm.STREAM_MAX_TOKENS else "tensor-cores"}
        if t <= 128:  # the other GEMM form at the same size, for the crossover
            other = t > fm.STREAM_MAX_TOKENS
            assert_close(fm.fused_moe(x, w, ids, routed, 10.0, shared, stream=other), ref, 2e-2, f"moe t={t}")
            row["other_form_us"] = round(bench(lambda: fm.fused_moe(x, w, ids, routed, 10.0, shared, stream=other)), 2)
        if t <= 32:
            row["torch_ref_us"] = round(bench(lambda: fm.fused_moe_ref(x, w, ids, routed, 10.0, shared),
                                              graph=False), 1)
        results.append(row)
        print(json.dumps(row), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ops", default="linear,moe")
    ap.add_argument("--linears", default=",".join(LINEARS), help=f"comma-separated subset of {', '.join(LINEARS)}")
    a = ap.parse_args()
    names = a.linears.split(",")
    if unknown := sorted(set(names) - set(LINEARS)):
        ap.error(f"unknown --linears {unknown}; choose from {', '.join(LINEARS)}")
    torch.manual_seed(0)
    bw, mm = ceilings()
    results, t0 = [], time.time()
    if "linear" in a.ops:
        run_linears(results, bw, mm, TOKENS, names)
    if "moe" in a.ops:
        run_moe(results, bw, mm, MOE_BATCHES)
    write_results(a.out, results, bw, mm, t0,
                  "Triton and cuBLAS: median of CUDA graph replays; torch references: eager (CUDA events)",
                  shapes={"hidden": D, "experts": E, "top_k": TOP_K, "moe_inter": INTER, "linears": LINEARS})


if __name__ == "__main__":
    main()
