"""Fused MoE (spec §3.10): routed experts as two grouped GEMMs over expert-sorted tokens, with the
clamped SwiGLU and the routing weight between them, and optionally the shared expert fused in as
one more always-selected expert (weight 1, its own weight format).

Flow: `moe_align` sorts the (token, slot) pairs by expert into BLOCK_M-row blocks (each block one
expert; -1 pads; the streaming form's one-row blocks need no sort: block m is pair m) -> kernel 1
computes gate and up for a block's rows, h = silu(min(g, L)) * clamp(u, -L, L) * w_route -> (FP8
quantization of h when the format wants it) -> kernel 2 h @ w2^T
per pair -> the pairs of each token summed. Formats: `QuantWeight` (plain, fp8_block, mxfp4);
the shared expert may differ from the routed ones (V4: FP8 shared, MXFP4 routed), each block
branches on its expert. Numerics follow `fused_moe_ref` (the model's math): gate/up rounded to
the activation dtype before the SwiGLU, h weighted before w2, routed sum in fp32, shared added last.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vllm.kernels._triton import dot_precision, launch_first_fitting, max_shared_memory, next_pow2, tl, triton
from vllm.kernels.act_quant import act_quant_fp8
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


class MoEAlignment(NamedTuple):
    sorted_pairs: torch.Tensor
    """`[blocks * BLOCK_M]` int32: pair ids (token * slots + slot) grouped by expert, -1 = padding."""
    block_expert: torch.Tensor
    """`[blocks]` int32: the expert of each block, -1 = unused block (its programs exit)."""


def _max_blocks(pairs: int, num_experts: int, block_m: int) -> int:
    """ceil(P / block_m) + min(P, E) bounds Σ_e ceil(count_e / block_m): fixed sizes, no host sync."""
    return -(-pairs // block_m) + min(pairs, num_experts)


def _with_shared(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """topk_ids with the shared expert (id num_experts) appended to every token: `[T, k + 1]`."""
    return torch.cat([topk_ids, torch.full_like(topk_ids[:, :1], num_experts)], 1)


def moe_align_ref(topk_ids: torch.Tensor, num_experts: int, block_m: int, shared_expert: bool = False) -> MoEAlignment:
    """Group the pairs by expert into block_m-row blocks (torch ops, stable order within an expert).
    `shared_expert`: every token has one more pair, slot k, on expert num_experts (the shared expert,
    always selected), as if topk_ids had that column; the layout then covers num_experts + 1 experts."""
    if shared_expert:
        topk_ids, num_experts = _with_shared(topk_ids, num_experts), num_experts + 1
    flat = topk_ids.flatten().long()
    p = flat.numel()
    max_blocks = _max_blocks(p, num_experts, block_m)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would sync with the host
    blocks_per = (counts + block_m - 1) // block_m
    block_end = torch.cumsum(blocks_per, 0)
    row_start = torch.cumsum(counts, 0) - counts
    expert_sorted = flat[order]
    rank = torch.arange(p, device=flat.device) - row_start[expert_sorted]
    dest = (block_end - blocks_per)[expert_sorted] * block_m + rank
    sorted_pairs = torch.full((max_blocks * block_m,), -1, dtype=torch.int32, device=flat.device)
    sorted_pairs[dest] = order.to(torch.int32)
    b = torch.arange(max_blocks, device=flat.device)
    block_expert = torch.searchsorted(block_end, b, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return MoEAlignment(sorted_pairs, block_expert)


@triton.jit
def _routed_slot(pair, ok, slots, SHARED: tl.constexpr):
    """Where each pair's routed slot sits in the `[T, k]` routing tensors, and whether it has one: with
    SHARED a token's `slots` pairs are its k = slots - 1 routed ones, then the shared expert's (which
    is stored nowhere)."""
    if SHARED:
        slot = pair % slots
        return (pair // slots) * (slots - 1) + slot, ok & (slot < slots - 1)
    return pair, ok


@triton.jit
def _pair_expert(ids_ptr, pair, ok, slots, shared_id, SHARED: tl.constexpr):
    """The expert of each pair: from topk_ids, or `shared_id` for the shared expert's (SHARED)."""
    at, routed = _routed_slot(pair, ok, slots, SHARED)
    e = tl.load(ids_ptr + at, mask=routed, other=0).to(tl.int32)
    return tl.where(routed, e, shared_id) if SHARED else e


@triton.jit
def _align_layout_kernel(ids_ptr, cursor_ptr, block_expert_ptr, sorted_ptr, P, slots, E, max_blocks, block_m,
                         SHARED: tl.constexpr, NB: tl.constexpr, CHUNK: tl.constexpr, BB: tl.constexpr):
    """One program: expert histogram, each expert's first block (its row cursor for the scatter),
    the expert of every block, and -1 in every row. (E counts the shared expert, the last, if SHARED.)"""
    counts = tl.zeros((NB,), dtype=tl.int32)
    for p0 in range(0, P, CHUNK):
        offs = p0 + tl.arange(0, CHUNK)
        ok = offs < P
        counts += tl.histogram(_pair_expert(ids_ptr, offs, ok, slots, E - 1, SHARED), NB, mask=ok)
    blocks = (counts + block_m - 1) // block_m
    end = tl.cumsum(blocks, 0)  # bins past E hold no pairs: their end is the total
    bins = tl.arange(0, NB)
    tl.store(cursor_ptr + bins, (end - blocks) * block_m, mask=bins < E)
    for b0 in range(0, max_blocks, BB):
        b = b0 + tl.arange(0, BB)
        expert = tl.sum((end[None, :] <= b[:, None]).to(tl.int32), 1)  # experts whose blocks end by b
        tl.store(block_expert_ptr + b, tl.where(expert < E, expert, -1), mask=b < max_blocks)
    for r0 in range(0, max_blocks * block_m, CHUNK):
        r = r0 + tl.arange(0, CHUNK)
        tl.store(sorted_ptr + r, tl.full((CHUNK,), -1, tl.int32), mask=r < max_blocks * block_m)


@triton.jit
def _align_scatter_kernel(ids_ptr, cursor_ptr, sorted_ptr, P, slots, E, SHARED: tl.constexpr, CHUNK: tl.constexpr):
    """Each pair takes the next row of its expert (atomic cursor): order within an expert is
    arbitrary, which no result depends on (rows are computed independently, slots summed in order)."""
    offs = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
    ok = offs < P
    e = _pair_expert(ids_ptr, offs, ok, slots, E - 1, SHARED)
    row = tl.atomic_add(cursor_ptr + e, 1, mask=ok)
    tl.store(sorted_ptr + row, offs.to(tl.int32), mask=ok)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, shared_expert: bool = False) -> MoEAlignment:
    """Triton `moe_align_ref` in two launches (layout, then scatter), graph-capturable; the rows of
    an expert may come in any order. The shared expert's pairs are made in the kernels (no copy of
    topk_ids with its column)."""
    assert topk_ids.dim() == 2 and topk_ids.is_contiguous() and not topk_ids.is_floating_point(), \
        "topk_ids must be a contiguous integer [T, k]"
    flat = topk_ids.flatten()
    slots = topk_ids.shape[1] + shared_expert
    num_experts += shared_expert
    p = topk_ids.shape[0] * slots
    max_blocks = _max_blocks(p, num_experts, block_m)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=flat.device)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=flat.device)
    sorted_pairs = torch.empty(max_blocks * block_m, dtype=torch.int32, device=flat.device)
    if max_blocks:
        _align_layout_kernel[(1,)](flat, cursor, block_expert, sorted_pairs, p, slots, num_experts, max_blocks, block_m,
                                   SHARED=shared_expert, NB=next_pow2(num_experts), CHUNK=1024, BB=16, num_warps=8)
        _align_scatter_kernel[(triton.cdiv(p, 1024),)](flat, cursor, sorted_pairs, p, slots, num_experts,
                                                       SHARED=shared_expert, CHUNK=1024, num_warps=4)
    return MoEAlignment(sorted_pairs, block_expert)


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
    at, routed = _routed_slot(pairs, row_ok, slots, HAS_SHARED)
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
        expert = tl.max(_pair_expert(pairs_ptr, pairs, pairs >= 0, slots, shared_id, HAS_SHARED), 0)
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


__all__ = ["ExpertWeights", "MoEAlignment", "clamped_swiglu", "dense_expert", "fused_moe", "fused_moe_ref", "moe_align",
           "moe_align_ref"]
