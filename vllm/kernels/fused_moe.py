"""Fused MoE (spec §3.10): routed experts as two grouped GEMMs over expert-sorted tokens, with the
clamped SwiGLU and the routing weight between them, and optionally the shared expert fused in as
one more always-selected expert (weight 1, its own weight format).

Flow: `moe_align` (`moe_align.py`) sorts the (token, slot) pairs by expert into BLOCK_M-row blocks
(each block one expert; -1 pads; the streaming form's one-row blocks need no sort: block m is pair
m) -> kernel 1 computes gate and up for a block's rows, h = silu(min(g, L)) * clamp(u, -L, L) *
w_route -> (FP8 quantization of h when the format wants it) -> kernel 2 h @ w2^T per pair -> the
pairs of each token summed. Formats: `QuantWeight` (plain, fp8_block, mxfp4); the shared expert may
differ from the routed ones (V4: FP8 shared, MXFP4 routed), each block branches on its expert.
Numerics follow `fused_moe_ref` (the model's math): gate/up rounded to the activation dtype before
the SwiGLU, h weighted before w2, routed sum in fp32, shared added last.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vllm.kernels._triton import dot_precision, launch_first_fitting, max_shared_memory, tl, triton
from vllm.kernels.act_quant import act_quant_fp8
from vllm.kernels.moe_align import MoEAlignment, moe_align, pair_expert, routed_slot
from vllm.kernels.moe_stream import stream_k_tile, stream_row
from vllm.kernels.quant_gemm import (ACT_BLOCK, _FMT_CODE, FP8_BLOCK, MXFP4, QuantWeight, _accumulate, compute_dtype,
                                     linear, linear_ref, mxfp4_scaled_dot)


class ExpertWeights(NamedTuple):
    """gate `w1`, up `w3` `[(E,) I, D]` and down `w2` `[(E,) D, I]` projections, one format each."""

    w1: QuantWeight
    w3: QuantWeight
    w2: QuantWeight


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """silu(min(gate, limit)) * clamp(up, -limit, limit)."""
    return F.silu(gate.clamp(max=limit)) * up.clamp(-limit, limit)


def dense_expert(x: torch.Tensor, w: ExpertWeights, limit: float, linear=linear_ref,
                 route_w: torch.Tensor | None = None) -> torch.Tensor:
    """One expert on all rows of x through `linear` (the reference or the kernel): w2(swiglu(w1 x,
    w3 x) [* route_w, before w2 as the reference does])."""
    h = clamped_swiglu(linear(x, w.w1).float(), linear(x, w.w3).float(), limit)
    if route_w is not None:
        h = h * route_w[:, None]
    return linear(h.to(x.dtype), w.w2)


def _one_expert(w: ExpertWeights, e: int) -> ExpertWeights:
    return ExpertWeights(*(q._replace(weight=q.weight[e], scale=None if q.scale is None else q.scale[e]) for q in w))


def fused_moe_ref(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, routed: ExpertWeights,
                  limit: float, shared: ExpertWeights | None = None) -> torch.Tensor:
    """x `[T, D]`, topk_weights `[T, k]` fp32, topk_ids `[T, k]` int -> `[T, D]` x.dtype:
    Σ_slots w * Expert_id(x) (fp32 sum) + SharedExpert(x)."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in torch.unique(topk_ids).tolist():
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        y = dense_expert(x[tok], _one_expert(routed, e), limit, route_w=topk_weights[tok, slot])
        out.index_add_(0, tok, y.float())
    out = out.to(x.dtype)
    return out if shared is None else out + dense_expert(x, shared, limit)


@triton.jit
def _expert_tile(a_ptr, arow, row_ok, as_ptr, stride_am, stride_asm, w1_ptr, ws1_ptr, w3_ptr, ws3_ptr, n, n_ok, K,
                 stride_wn, stride_wsn, stride_wsk, GATED: tl.constexpr, W_FMT: tl.constexpr, A_FP8: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, WBLOCK_N: tl.constexpr,
                 WBLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
                 SCALED_DOT: tl.constexpr, EVEN_K: tl.constexpr, STREAM: tl.constexpr):
    """(A w1^T, A w3^T) for GATED (gate and up in one K loop), else (A w1^T, unused); `arow`: the rows of
    A. STREAM: on the CUDA cores (moe_stream), else on the tensor cores."""
    if STREAM:  # one-row blocks (a block that exists has its row): the row as a scalar, times the stride
        # after the reduction, so the compiler still knows the offset's alignment (whole-vector loads)
        r = tl.max(arow, 0)
        out1, out3 = stream_row(a_ptr, r * stride_am, as_ptr, r * stride_asm, w1_ptr, ws1_ptr, w3_ptr,
                                ws3_ptr, n, n_ok, K, stride_wn, stride_wsn, stride_wsk, GATED, W_FMT, A_FP8, BN, BK,
                                WBLOCK_N, WBLOCK_K, EVEN_K)
        acc1, acc3 = out1[None, :], out3[None, :]
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        acc1, acc3 = _accumulate(acc, acc, a_ptr, arow * stride_am, row_ok, as_ptr, arow * stride_asm, w1_ptr,
                                 ws1_ptr, w3_ptr, ws3_ptr, n, n, n_ok, 0, K, K, stride_wn, stride_wsn, stride_wsk,
                                 W_FMT, A_FP8, BK, WBLOCK_N, WBLOCK_K, COMPUTE, PRECISION, SCALED_DOT=SCALED_DOT,
                                 DUAL=GATED, EVEN_K=EVEN_K)
    return acc1, acc3


@triton.jit
def _route_weight(route_ptr, pairs, row_ok, slots, HAS_SHARED: tl.constexpr):
    """Routing weight of each pair (`route` `[T, k]`); the shared expert's (HAS_SHARED) is 1."""
    at, routed = routed_slot(pairs, row_ok, slots, HAS_SHARED)
    w = tl.load(route_ptr + at, mask=routed, other=0.0)
    return tl.where(routed, w, 1.0) if HAS_SHARED else w


@triton.jit
def _moe_gemm_kernel(a_ptr, as_ptr, w1_ptr, ws1_ptr, w3_ptr, ws3_ptr, s1_ptr, ss1_ptr, s3_ptr, ss3_ptr, out_ptr,
                     pairs_ptr, block_expert_ptr, route_ptr, N, K, slots, shared_id, limit, stride_am, stride_asm,
                     stride_we, stride_wn, stride_wse, stride_wsn, stride_wsk, stride_sn, stride_ssn, stride_ssk,
                     stride_om, GATED: tl.constexpr, A_BY_TOKEN: tl.constexpr, HAS_SHARED: tl.constexpr,
                     W_FMT: tl.constexpr, S_FMT: tl.constexpr, A_FP8: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, BK: tl.constexpr, WBLOCK_N: tl.constexpr, WBLOCK_K: tl.constexpr,
                     COMPUTE: tl.constexpr, PRECISION: tl.constexpr, SCALED_DOT: tl.constexpr,
                     S_SCALED_DOT: tl.constexpr, EVEN_K: tl.constexpr, S_BK: tl.constexpr, S_EVEN_K: tl.constexpr,
                     STREAM: tl.constexpr):
    """One (expert block, N tile): GATED -> h = swiglu(A w1^T, A w3^T) * route weight; else A w2^T.
    Rows of A are tokens (A_BY_TOKEN, first GEMM) or pairs (second GEMM); outputs are per pair.
    SCALED_DOT / S_SCALED_DOT: MXFP4 weights of the routed / shared expert through tl.dot_scaled.
    S_BK / S_EVEN_K: the shared expert's K tile (its own format may want another)."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    if STREAM:  # one-row blocks: block m is pair m, no alignment; pairs_ptr holds topk_ids `[T, k]`
        pairs = (pid_m + tl.arange(0, BM)).to(tl.int64)
        expert = tl.max(pair_expert(pairs_ptr, pairs, pairs >= 0, slots, shared_id, HAS_SHARED), 0)
    else:
        expert = tl.load(block_expert_ptr + pid_m)
        pairs = tl.load(pairs_ptr + pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    if expert >= 0:
        row_ok = pairs >= 0
        arow = pairs // slots if A_BY_TOKEN else pairs
        n = pid_n * BN + tl.arange(0, BN)
        n_ok = n < N
        e = expert.to(tl.int64)
        if HAS_SHARED:
            if expert == shared_id:
                acc1, acc3 = _expert_tile(a_ptr, arow, row_ok, as_ptr, stride_am, stride_asm, s1_ptr, ss1_ptr,
                                          s3_ptr, ss3_ptr, n, n_ok, K, stride_sn, stride_ssn, stride_ssk, GATED,
                                          S_FMT, A_FP8, BM, BN, S_BK, WBLOCK_N, WBLOCK_K, COMPUTE, PRECISION,
                                          S_SCALED_DOT, S_EVEN_K, STREAM)
            else:
                acc1, acc3 = _expert_tile(a_ptr, arow, row_ok, as_ptr, stride_am, stride_asm, w1_ptr + e * stride_we,
                                          ws1_ptr + e * stride_wse, w3_ptr + e * stride_we, ws3_ptr + e * stride_wse,
                                          n, n_ok, K, stride_wn, stride_wsn, stride_wsk, GATED, W_FMT, A_FP8, BM,
                                          BN, BK, WBLOCK_N, WBLOCK_K, COMPUTE, PRECISION, SCALED_DOT, EVEN_K,
                                          STREAM)
        else:
            acc1, acc3 = _expert_tile(a_ptr, arow, row_ok, as_ptr, stride_am, stride_asm, w1_ptr + e * stride_we,
                                      ws1_ptr + e * stride_wse, w3_ptr + e * stride_we, ws3_ptr + e * stride_wse, n,
                                      n_ok, K, stride_wn, stride_wsn, stride_wsk, GATED, W_FMT, A_FP8, BM, BN, BK,
                                      WBLOCK_N, WBLOCK_K, COMPUTE, PRECISION, SCALED_DOT, EVEN_K, STREAM)
        out_t = out_ptr.dtype.element_ty
        res = acc1
        if GATED:  # gate/up rounded to the activation dtype first, as the reference's projections return it
            g = tl.minimum(acc1.to(out_t).to(tl.float32), limit)
            u = tl.minimum(tl.maximum(acc3.to(out_t).to(tl.float32), -limit), limit)
            w = _route_weight(route_ptr, pairs, row_ok, slots, HAS_SHARED)
            res = g / (1.0 + tl.exp(-g)) * u * w[:, None]
        tl.store(out_ptr + pairs[:, None] * stride_om + n[None, :], res.to(out_t), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _combine_kernel(y_ptr, out_ptr, D, slots, TOP_K: tl.constexpr, HAS_SHARED: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """out[t] = (Σ_{j < TOP_K} y[t, j] in fp32, slot order) rounded to out's dtype, + the shared expert's
    y[t, TOP_K] (a bf16 add, as the reference's): one launch for what took four torch kernels."""
    t = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = c < D
    row = y_ptr + t * slots * D + c
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(row + j * D, mask=ok, other=0.0).to(tl.float32)
    out_t = out_ptr.dtype.element_ty
    res = acc.to(out_t)
    if HAS_SHARED:
        res = (res.to(tl.float32) + tl.load(row + TOP_K * D, mask=ok, other=0.0).to(tl.float32)).to(out_t)
    tl.store(out_ptr + t * D + c, res, mask=ok)


SMEM_MARGIN = 32 << 10  # what Triton adds to the pipelined tiles (H200, bf16 3-stage prefill config: 240 KB, 216 tiles)
STREAM_MAX_TOKENS = 64  # up to here the CUDA-core streaming GEMM (moe_stream) beats the tensor-core tiles


def _use_stream(tokens: int, stream: bool | None) -> bool:
    """The GEMM form: `stream` when forced, else the streaming one up to STREAM_MAX_TOKENS tokens."""
    return tokens <= STREAM_MAX_TOKENS if stream is None else stream


class MoETiling(NamedTuple):
    """Launch shape of both grouped GEMMs: rows per expert block, N and K tiles, warps, pipeline stages,
    and whether the blocks run on the CUDA cores (`stream`, decode) or the tensor cores."""

    bm: int
    bn: int
    bk: int
    warps: int
    stages: int
    stream: bool = False


def _moe_config(tokens: int, pairs: int, experts: int, fp32: bool, a_bytes: float, w_bytes: float,
                smem: int, stream: bool | None = None) -> MoETiling:
    """Up to STREAM_MAX_TOKENS tokens an expert sees about one row: the streaming kernel, one-row blocks
    (an H200 sweep at V4-Flash shapes). Beyond, tensor-core tiles: few rows per expert -> 16-row blocks
    streaming weights with narrow N tiles; many -> 64-row blocks (256-wide K tiles did no better; the
    streaming form lost at 128 tokens, 6456 against 4231 us). fp32 operands (two accumulations for gate/up) take
    half the K tile and two stages. Stages then drop until a stage's tiles (A, and gate and up of the
    routed and the shared weights, at `a_bytes` / `w_bytes` an element as stored) fit `smem`: bf16
    weights at 3 stages overflow Hopper, most configs SM12x. (The streaming kernel's K tile follows
    each weight format: `stream_k_tile`.) `stream` forces the choice (tests, benchmarks)."""
    if _use_stream(tokens, stream):
        return MoETiling(1, 16, 0, 4, 1, stream=True)
    bm, bn, bk, warps, stages = (16, 64, 128, 4, 4) if pairs <= 4 * experts else (64, 128, 64, 8, 3)
    if fp32:
        bk, stages = bk // 2, 2
    stage_bytes = bm * bk * a_bytes + 4 * bn * bk * w_bytes
    while stages > 1 and stages * stage_bytes + SMEM_MARGIN > smem:
        stages -= 1
    return MoETiling(bm, bn, bk, warps, stages)


def _stored_bytes(w: QuantWeight) -> float:
    """Bytes a weight element takes as stored (MXFP4 packs two in a byte)."""
    return w.weight.element_size() / (2 if w.fmt == MXFP4 else 1)


def _scales(q: QuantWeight) -> tuple[torch.Tensor, int, int, int]:
    """Scale tensor (or the weight as a dummy pointer) and its (expert, n, k) strides."""
    if q.scale is None:
        return q.weight, 0, 0, 0
    s = q.scale
    return s, (s.stride(0) if s.dim() == 3 else 0), s.stride(-2), s.stride(-1)


def _grouped_gemm(a, a_s, out, align: MoEAlignment | None, ids, route, slots, tiling: MoETiling, routed, shared,
                  gate_up: bool, limit: float):
    """Launch kernel 1 (gate_up) or 2 over all blocks; `routed`/`shared` are (first, second) QuantWeights.
    Blocks: those of `align`, or with none (the streaming form) one a pair, in pair order (`out` has a
    row a pair), whose experts the kernel reads from `ids` (topk_ids)."""
    pairs_arg, block_expert = (ids, ids) if align is None else align
    num_blocks = out.shape[0] if align is None else align.block_expert.numel()
    bm, bn, bk, warps, stages, stream = tiling
    r1, r3 = routed
    n, k = r1.out_features, r1.in_features
    s1, s3 = shared if shared is not None else routed
    ws1, wse, wsn, wsk = _scales(r1)
    ss1, _, ssn, ssk = _scales(s1)
    blk = (s1 if s1.fmt == FP8_BLOCK else r1).block  # the FP8 weight's blocks (formats may mix)
    if stream:  # each format its own K tile
        bk, s_bk = stream_k_tile(_FMT_CODE[r1.fmt], blk[1]), stream_k_tile(_FMT_CODE[s1.fmt], blk[1])
    else:
        if FP8_BLOCK in (r1.fmt, s1.fmt):
            bk = min(bk, blk[1])  # an FP8 K tile stays inside one scale block
        s_bk = bk
    grid = (num_blocks, triton.cdiv(n, bn))
    cdt = compute_dtype(a, r1)
    launch = functools.partial(_moe_gemm_kernel[grid],
        a, a_s, r1.weight, ws1, r3.weight, _scales(r3)[0], s1.weight, ss1, s3.weight, _scales(s3)[0], out,
        pairs_arg, block_expert, route, n, k, slots, r1.weight.shape[0], limit, a.stride(0),
        a_s.stride(0), r1.weight.stride(0), r1.weight.stride(1), wse, wsn, wsk, s1.weight.stride(0), ssn, ssk,
        out.stride(0), GATED=gate_up, A_BY_TOKEN=gate_up, HAS_SHARED=shared is not None, W_FMT=_FMT_CODE[r1.fmt],
        S_FMT=_FMT_CODE[s1.fmt], A_FP8=r1.act_fp8, BM=bm, BN=bn, BK=bk, WBLOCK_N=blk[0], WBLOCK_K=blk[1],
        COMPUTE=cdt, PRECISION=dot_precision(torch.float32 if cdt == tl.float32 else torch.bfloat16),
        SCALED_DOT=not stream and mxfp4_scaled_dot(a, r1), S_SCALED_DOT=not stream and mxfp4_scaled_dot(a, s1),
        EVEN_K=k % bk == 0, S_BK=s_bk, S_EVEN_K=k % s_bk == 0, STREAM=stream, num_warps=warps)
    # the stage count is sized from an estimate of the kernel's shared memory; fewer where it misses
    launch_first_fitting(lambda cfg: launch(**cfg), (dict(num_stages=st) for st in range(stages, 0, -1)),
                         ("moe", a.device, cdt, r1.fmt, s1.fmt, r1.act_fp8, gate_up, tiling))


def _check(x: torch.Tensor, routed: ExpertWeights, shared: ExpertWeights | None) -> None:
    assert x.dim() == 2 and x.is_contiguous(), "x must be a contiguous [T, D]"
    for w in (routed + (shared or ())):
        assert w.in_features in (x.shape[1], routed.w1.out_features), "expert weight shapes do not match x"
    if shared is not None:
        assert shared.w1.act_fp8 == routed.w1.act_fp8, "shared and routed experts must agree on FP8 activations"
        assert shared.w1.fmt != FP8_BLOCK or routed.w1.fmt != FP8_BLOCK or shared.w1.block == routed.w1.block
        assert shared.w1.weight.dim() == 2 and routed.w1.weight.dim() == 3


def fused_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, routed: ExpertWeights,
              limit: float, shared: ExpertWeights | None = None, *, stream: bool | None = None,
              fuse_shared: bool | None = None) -> torch.Tensor:
    """Triton `fused_moe_ref` (same arguments). Routed weights stacked `[E, ...]`; `shared` (2-D
    weights) runs in the same launches as expert id E with weight 1, or beside them on its own linears:
    `fuse_shared` forces either, by default it is fused except on the streaming GEMM above one token.
    `stream` forces the CUDA-core streaming GEMM on or off (default: by token count, `_moe_config`)."""
    _check(x, routed, shared)
    t, d = x.shape
    if t == 0:
        return torch.empty_like(x)
    num_experts = routed.w1.weight.shape[0]
    stream = _use_stream(t, stream)
    if fuse_shared is None:  # streaming blocks hold one row: fused, every token would re-read and re-decode
        fuse_shared = not (stream and t > 1)  # the shared weight (H200, T = 8..64: 4-12% slower than beside)
    if shared is not None and not fuse_shared:
        return fused_moe(x, topk_weights, topk_ids, routed, limit, stream=stream) + dense_expert(x, shared, limit,
                                                                                                 linear)
    slots = topk_ids.shape[1] + (shared is not None)  # the shared expert: one more pair per token
    act_fp8 = routed.w1.act_fp8
    tiling = _moe_config(t, t * slots, num_experts + (shared is not None),
                         compute_dtype(x, routed.w1) == tl.float32, 1 if act_fp8 else x.element_size(),
                         max(_stored_bytes(w) for w in routed + (shared or ())), max_shared_memory(x.device),
                         stream)
    ids = topk_ids.contiguous()
    # one-row (streaming) blocks need no alignment: block m is pair m, its expert read from topk_ids
    align = None if tiling.stream else moe_align(ids, num_experts, tiling.bm, shared_expert=shared is not None)
    route = topk_weights.float().contiguous().view(-1)
    a, a_s = act_quant_fp8(x, ACT_BLOCK) if act_fp8 else (x, x.new_empty(1, 1, dtype=torch.float32))
    inter = routed.w1.out_features
    h = torch.empty(t * slots, inter, dtype=x.dtype, device=x.device)
    sh = (shared.w1, shared.w3) if shared is not None else None
    _grouped_gemm(a, a_s, h, align, ids, route, slots, tiling, (routed.w1, routed.w3), sh, True, limit)
    a2, a2_s = act_quant_fp8(h, ACT_BLOCK) if act_fp8 else (h, a_s)
    y = torch.empty(t * slots, d, dtype=x.dtype, device=x.device)
    sh2 = (shared.w2, shared.w2) if shared is not None else None
    _grouped_gemm(a2, a2_s, y, align, ids, route, slots, tiling, (routed.w2, routed.w2), sh2, False, limit)
    out = torch.empty_like(x)
    _combine_kernel[(t, triton.cdiv(d, 1024))](y, out, d, slots, TOP_K=topk_ids.shape[1],
                                                HAS_SHARED=shared is not None, BLOCK_D=1024, num_warps=4)
    return out


__all__ = ["ExpertWeights", "clamped_swiglu", "dense_expert", "fused_moe", "fused_moe_ref"]
