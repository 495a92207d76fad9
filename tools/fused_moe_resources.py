"""Compile the fused MoE GEMM kernel for a GPU architecture on this machine (no GPU needed) and print
registers, spilled stack bytes and shared memory for V4-Flash's experts (MXFP4 routed, FP8 shared,
FP8 activations) at a few token counts: the streaming (CUDA-core) and tensor-core forms, both GEMMs.

    python tools/fused_moe_resources.py --arch 120 --tokens 1,64,128,4096
"""

from __future__ import annotations

import argparse
import json

import triton.language as tl
from cubin_resources import kernel_resources  # tools/ (run as a script)

from vllm.kernels import fused_moe as fm
from vllm.kernels.moe_stream import stream_k_tile
from vllm.kernels.quant_gemm import _FMT_CODE, FP8_BLOCK, MXFP4

D, INTER, EXPERTS, TOP_K = 4096, 2048, 256, 6  # V4-Flash
ARG_TYPES = dict(a_ptr="*fp8e4nv", as_ptr="*fp32", w1_ptr="*i8", ws1_ptr="*u8", w3_ptr="*i8", ws3_ptr="*u8",
                 s1_ptr="*fp8e4nv", ss1_ptr="*u8", s3_ptr="*fp8e4nv", ss3_ptr="*u8", out_ptr="*bf16",
                 pairs_ptr="*i32", block_expert_ptr="*i32", route_ptr="*fp32", limit="fp32")


def resources(tokens: int, gate_up: bool, arch: int) -> dict:
    tiling = fm._moe_config(tokens, tokens * (TOP_K + 1), EXPERTS + 1, False, 1, 0.5, 101376 if arch >= 120 else
                            232448)
    bm, bn, bk, warps, stages, stream = tiling
    if stream:
        bk, s_bk = stream_k_tile(_FMT_CODE[MXFP4], 128), stream_k_tile(_FMT_CODE[FP8_BLOCK], 128)
    else:
        bk = s_bk = min(bk, 128)
    k = D if gate_up else INTER
    scaled = not stream and 90 <= arch < 120
    cons = dict(GATED=gate_up, A_BY_TOKEN=gate_up, HAS_SHARED=True, W_FMT=_FMT_CODE[MXFP4],
                S_FMT=_FMT_CODE[FP8_BLOCK], A_FP8=True, BM=bm, BN=bn, BK=bk, WBLOCK_N=128, WBLOCK_K=128,
                COMPUTE=tl.bfloat16, PRECISION="tf32", SCALED_DOT=scaled, S_SCALED_DOT=False, EVEN_K=k % bk == 0,
                S_BK=s_bk, S_EVEN_K=k % s_bk == 0, STREAM=stream)
    names = [n for n in fm._moe_gemm_kernel.arg_names if n not in cons]
    types = {n: ARG_TYPES.get(n, "i32") for n in names}
    res = kernel_resources(fm._moe_gemm_kernel, types, cons, arch, warps, stages,
                           not_divisible=("slots", "shared_id", "N", "K"))
    return {"tokens": tokens, "gemm": "gate_up" if gate_up else "down", "form": "stream" if stream else "tensor",
            "block_m": bm, "block_n": bn, "block_k": bk, "num_warps": warps, "num_stages": stages, **res}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90, help="compute capability as one number (90 = Hopper)")
    ap.add_argument("--tokens", default="1,64,128,4096", help="comma-separated token counts")
    a = ap.parse_args()
    for t in (int(v) for v in a.tokens.split(",")):
        for gate_up in (True, False):
            print(json.dumps(resources(t, gate_up, a.arch)), flush=True)


if __name__ == "__main__":
    main()
