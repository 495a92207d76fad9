"""The fused MoE's decode-time grouped GEMM on the CUDA cores: few rows per expert, weights streamed.

At decode an expert sees one to a few rows, so a tensor-core tile of 16+ rows is mostly padding and
the MXFP4 weight must travel registers -> shared memory -> MMA layout for nothing: `tl.dot_scaled`
streamed the decode-shape weights at ~1.0 TB/s on an H200, this form at ~1.5 (read ceiling 3.6;
benchmarks/results/h200_mxfp4_stream_forms.json). Each program takes one single-row expert block
and a BN-wide tile of the output features and walks K: every weight element is decoded into fp32
and multiplied into the row with an FMA, partial products kept per K column and summed once at
the end. (Blocks of 2-4 rows, a 3-D accumulator, measured slower at every batch: Triton moved the
tiles between layouts through shared memory each K step.)

MXFP4 decode with no lookup: a nibble's magnitude bits (e1 e0 m) shifted to fp32 bits 24..22 and
its sign to bit 31 read as an fp32 of 2^-126 times the e2m1 value (e = 0 lands on the subnormal
m * 2^-127). The activation carries 2^63 and the group scale byte s becomes the factor 2^(s - 64),
built from its bits, so products stay normal and every factor is exact (scale bytes 0..191, i.e.
scales up to 2^64; activations above 2^-62 in magnitude). FP8 weights convert in hardware; their
128x128 block scale multiplies the decoded weight. Accumulation is fp32, as the reference's.
"""

from __future__ import annotations

from vllm.kernels._triton import HAS_TRITON, tl, triton

TWO_POW_63 = tl.constexpr(2.0**63) if HAS_TRITON else None


@triton.jit
def _row_x(a_ptr, a_row, as_ptr, as_row, k, K, A_FP8: tl.constexpr, PRESCALE: tl.constexpr,
           EVEN_K: tl.constexpr):
    """fp32 activations of one row at columns k (FP8: times their per-128 scale), times PRESCALE."""
    ok = (k < K) | EVEN_K
    x = tl.load(a_ptr + a_row + k, mask=ok, other=0.0).to(tl.float32)
    if A_FP8:
        x *= tl.load(as_ptr + as_row + k // 128, mask=ok, other=0.0)
    return x * PRESCALE


@triton.jit
def _load_tile(w_ptr, ws_ptr, n, n_ok, k0, K, stride_wn, stride_wsn, stride_wsk, W_FMT: tl.constexpr,
               BK: tl.constexpr, WBLOCK_N: tl.constexpr, WBLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """One K tile of weight rows `n` as stored, and its scales (zeros past K). MXFP4: packed bytes
    `[BN, BK/2]` and scale bytes `[BN, BK/32]`; FP8 blocks: `[BN, BK]` e4m3 and the scale bytes of the K
    blocks it covers `[BN, max(1, BK/WBLOCK_K)]` (a tile shorter than a block sits inside one);
    plain: `[BN, BK]` and unused scales. EVEN_K (K a multiple of BK, k0 inside K): no K mask, so the
    loads stay whole vectors (a per-element K mask compiled to one predicated byte load per byte)."""
    if W_FMT == 2:
        kc = k0 // 2 + tl.arange(0, BK // 2)
        g = k0 // 32 + tl.arange(0, BK // 32)
        w = tl.load(w_ptr + n[:, None] * stride_wn + kc[None, :],
                    mask=n_ok[:, None] & ((kc < K // 2) | EVEN_K)[None, :], other=0)
        s = tl.load(ws_ptr + n[:, None] * stride_wsn + g[None, :],
                    mask=n_ok[:, None] & ((g < K // 32) | EVEN_K)[None, :], other=0)
    else:
        k = k0 + tl.arange(0, BK)
        w = tl.load(w_ptr + n[:, None] * stride_wn + k[None, :], mask=n_ok[:, None] & ((k < K) | EVEN_K)[None, :],
                    other=0.0)
        s = w  # (plain: no scales)
        if W_FMT == 1:  # the scale bytes of the tile's K blocks
            SB: tl.constexpr = BK // WBLOCK_K if BK > WBLOCK_K else 1
            kb = k0 // WBLOCK_K + tl.arange(0, SB)
            s = tl.load(ws_ptr + (n // WBLOCK_N)[:, None] * stride_wsn + kb[None, :] * stride_wsk,
                        mask=n_ok[:, None] & ((kb * WBLOCK_K < K) | EVEN_K)[None, :], other=0)
    return w, s


@triton.jit
def _mxfp4_fma(acc, w, s, xe, xo, BN: tl.constexpr, BK: tl.constexpr):
    """acc `[BN, BK/2]` += even and odd columns of one MXFP4 K tile (x pre-scaled by 2^63)."""
    HALF: tl.constexpr = BK // 2
    b = w.to(tl.uint8, bitcast=True).to(tl.int32)
    mult = ((s.to(tl.uint8, bitcast=True).to(tl.int32) + 63) << 23).to(tl.float32, bitcast=True)  # 2^(s - 64)
    mult = tl.reshape(tl.broadcast_to(mult[:, :, None], (BN, BK // 32, 16)), (BN, HALF))
    lo = (((b & 7) << 22) | ((b & 8) << 28)).to(tl.float32, bitcast=True)  # even k: low nibble
    hi = (((b & 0x70) << 18) | ((b & 0x80) << 24)).to(tl.float32, bitcast=True)
    return acc + (lo * xe[None, :] + hi * xo[None, :]) * mult


@triton.jit
def _block_fma(acc, w, s, x, W_FMT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, WBLOCK_K: tl.constexpr):
    """acc `[BN, BK]` += one K tile of plain or FP8-block weights."""
    wf = w.to(tl.float32)
    if W_FMT == 1:
        SB: tl.constexpr = BK // WBLOCK_K if BK > WBLOCK_K else 1
        mult = ((s.to(tl.int32) & 0xFF) << 23).to(tl.float32, bitcast=True)  # [BN, SB]
        wf *= tl.reshape(tl.broadcast_to(mult[:, :, None], (BN, SB, BK // SB)), (BN, BK))
    return acc + wf * x[None, :]


@triton.jit
def stream_row(a_ptr, a_row, as_ptr, as_row, w1_ptr, ws1_ptr, w3_ptr, ws3_ptr, n, n_ok, K, stride_wn, stride_wsn,
               stride_wsk, GATED: tl.constexpr, W_FMT: tl.constexpr, A_FP8: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr, WBLOCK_N: tl.constexpr, WBLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """(a w1^T, a w3^T) `[BN]` fp32 for the row of A at element offset `a_row` (GATED: gate and up in
    one K loop; else (a w1^T, the same)). W (and scales) already offset to the expert. The next K
    tile's weights are requested before this one's arithmetic (twice the bytes in flight); with
    EVEN_K the last tile's prefetch re-reads the last tile instead of masking past K."""
    W: tl.constexpr = BK // 2 if W_FMT == 2 else BK  # MXFP4: even and odd columns side by side
    acc1 = tl.zeros([BN, W], dtype=tl.float32)
    acc3 = tl.zeros([BN, W], dtype=tl.float32)
    w1, s1 = _load_tile(w1_ptr, ws1_ptr, n, n_ok, 0, K, stride_wn, stride_wsn, stride_wsk, W_FMT, BK, WBLOCK_N,
                        WBLOCK_K, EVEN_K)
    w3, s3 = w1, s1
    if GATED:
        w3, s3 = _load_tile(w3_ptr, ws3_ptr, n, n_ok, 0, K, stride_wn, stride_wsn, stride_wsk, W_FMT, BK,
                            WBLOCK_N, WBLOCK_K, EVEN_K)
    for k0 in range(0, K, BK):
        cur1, cs1, cur3, cs3 = w1, s1, w3, s3
        k_next = k0 + BK
        if EVEN_K:  # (a multiple of BK either way: whole-vector loads)
            k_next = tl.multiple_of(tl.minimum(k_next, K - BK), BK)
        w1, s1 = _load_tile(w1_ptr, ws1_ptr, n, n_ok, k_next, K, stride_wn, stride_wsn, stride_wsk, W_FMT, BK,
                            WBLOCK_N, WBLOCK_K, EVEN_K)
        if GATED:
            w3, s3 = _load_tile(w3_ptr, ws3_ptr, n, n_ok, k_next, K, stride_wn, stride_wsn, stride_wsk, W_FMT, BK,
                                WBLOCK_N, WBLOCK_K, EVEN_K)
        if W_FMT == 2:
            x = _row_x(a_ptr, a_row, as_ptr, as_row, k0 + tl.arange(0, BK), K, A_FP8, TWO_POW_63, EVEN_K)
            xe, xo = tl.split(tl.reshape(x, (W, 2)))  # one contiguous load, then even and odd k
            acc1 = _mxfp4_fma(acc1, cur1, cs1, xe, xo, BN, BK)
            if GATED:
                acc3 = _mxfp4_fma(acc3, cur3, cs3, xe, xo, BN, BK)
        else:
            x = _row_x(a_ptr, a_row, as_ptr, as_row, k0 + tl.arange(0, BK), K, A_FP8, 1.0, EVEN_K)
            acc1 = _block_fma(acc1, cur1, cs1, x, W_FMT, BN, BK, WBLOCK_K)
            if GATED:
                acc3 = _block_fma(acc3, cur3, cs3, x, W_FMT, BN, BK, WBLOCK_K)
    out1 = tl.sum(acc1, 1)
    out3 = out1
    if GATED:
        out3 = tl.sum(acc3, 1)
    return out1, out3


def stream_k_tile(fmt_code: int, fp8_block_k: int) -> int:
    """K tile of the streaming kernel for a weight format (H200 sweep at V4-Flash decode shapes: wider
    tiles put more bytes in flight; MXFP4 at 128 and FP8 at 64 were 1.3-1.8x slower than 256 / 128).
    `fp8_block_k` (read for FP8 blocks only) must be a power of two, so a tile covers whole blocks or
    sits inside one."""
    if fmt_code == 2:
        return STREAM_K_TILES["mxfp4"]
    if fmt_code == 1:
        assert fp8_block_k & (fp8_block_k - 1) == 0, f"FP8 block K {fp8_block_k} is not a power of two"
        return STREAM_K_TILES["fp8_block"]
    return STREAM_K_TILES["plain"]


STREAM_K_TILES = {"mxfp4": 256, "fp8_block": 128, "plain": 128}


__all__ = ["stream_k_tile", "stream_row"]
