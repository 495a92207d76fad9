"""The Hopper sparse MLA kernel over fp8_ds_mla pages (Gluon, SM 9.x): V4's KV cache read as stored.

The math warpgroups are the plain-row kernel's (`sparse_attn_sm90_attend._attend`: they see a ring of
two bf16 `[BLOCK_K, 512]` tiles). The load warps differ: they cp.async the rows' e4m3 NoPE bytes, bf16
RoPE channels and UE8M0 scale bytes into a staging ring of NUM_RAW tiles, running NUM_RAW - 1 tiles
ahead; when one has landed they dequantize it (64 channels a scale, exact in bf16) into the ring tile
the math warpgroups freed, copy the RoPE channels into its last 64 columns, and arrive on its `full`
barrier.

A page (`fp8_ds_mla.Fp8DsMlaLayout`) holds `block_size` rows of 576 data bytes (448 e4m3 + 64 bf16),
then their 8 scale bytes each. Staging costs shared memory next to q (64 KB) and the ring, so the ring
tiles are 32 rows, against the plain-row kernel's 64.
"""

from __future__ import annotations

import torch

from vllm.kernels.sparse_attn_sm90_attend import (HAS_GLUON, LOAD_WARPS, LOG2E, NUM_WARPS, finish_launch,
                                                  plan_launch)

# 32-row ring tiles two deep, staging four deep (copies 3 tiles ahead); the rest of the 227 KB is q's 64 KB.
# H200, V4-Flash CSA 32K, 8 / 32 / 64 / 128 requests (h200_sparse_attn_sm90_fp8.json): 17.8 / 31.5 / 49.2 /
# 76.1 us; the plain-row kernel's 64-row tiles with one 32-row staging tile (copies not ahead) 20.2 / 32.0 /
# 48.3 / 76.3 (prefill 1959 vs 2143 us); staging 3 deep 81.7 vs 81.2 at 128 (h200_sparse_attn_sm90_fp8_sweep.json)
BLOCK_K, NUM_BUF, NUM_RAW = 32, 2, 4
LOAD_REGS = 88  # the fewest with no spills in the load warps (compile-only check in the tests)
NOPE, ROPE, DATA_BYTES, SCALE_BYTES = 448, 64, 576, 8  # the V4 latent layout the kernel is written for

if HAS_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

    from vllm.kernels.sparse_attn_sm90_attend import _attend, _issue_q, _math_buffers, _program_list, _tile_slots

    # the layout, as the kernels see it
    _NOPE, _ROPE, _DATA_BYTES, _SCALE_BYTES = (gl.constexpr(v) for v in (NOPE, ROPE, DATA_BYTES, SCALE_BYTES))

    @gluon.jit
    def _row_bytes(slots, page_rows, page_bytes):
        """Byte offsets of the rows at `slots` (-1 read as 0) in their pages: data start, scales start."""
        safe = gl.where(slots >= 0, slots, 0)
        page = (safe // page_rows).to(gl.int64)
        row = (safe % page_rows).to(gl.int64)
        return page * page_bytes + row * _DATA_BYTES, page * page_bytes + page_rows * _DATA_BYTES + row * _SCALE_BYTES

    @gluon.jit
    def _read_slots(idx0, idx1, k0_len, base, hi, BLOCK_K: gl.constexpr, nope_l: gl.constexpr,
                    rope_l: gl.constexpr, scale_l: gl.constexpr):
        """The slots of list positions [base, base + BK) (and their sources) in each piece's layout."""
        sn, in0n = _tile_slots(idx0, idx1, k0_len, base + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, nope_l)), hi)
        sr, in0r = _tile_slots(idx0, idx1, k0_len, base + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, rope_l)), hi)
        ss, in0s = _tile_slots(idx0, idx1, k0_len, base + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, scale_l)),
                               hi)
        return sn, in0n, sr, in0r, ss, in0s

    @gluon.jit
    def _issue_tile(nope_dst, rope_dst, scale_dst, src0, rope0, src1, rope1, page0_rows, page0_bytes,
                    page1_rows, page1_bytes, sn, in0n, sr, in0r, ss, in0s, nope_l: gl.constexpr,
                    rope_l: gl.constexpr, scale_l: gl.constexpr):
        """cp.async one tile's NoPE bytes `[BK, 512]` (zero past 448), RoPE `[BK, 64]` and scales `[BK, 8]`
        into staging, from its slots (`_read_slots`); -1 rows are zero-filled."""
        d0, _ = _row_bytes(sn, page0_rows, page0_bytes)
        d1, _ = _row_bytes(sn, page1_rows, page1_bytes)
        c = gl.arange(0, 512, layout=gl.SliceLayout(0, nope_l))
        row = gl.where(in0n, src0 + d0, src1 + d1)
        cp.async_copy_global_to_shared(nope_dst, row[:, None] + c[None, :],
                                       mask=(sn >= 0)[:, None] & (c < _NOPE)[None, :])
        d0, _ = _row_bytes(sr, page0_rows, page0_bytes)
        d1, _ = _row_bytes(sr, page1_rows, page1_bytes)
        r = gl.arange(0, _ROPE, layout=gl.SliceLayout(0, rope_l))
        row = gl.where(in0r, rope0 + (d0 + _NOPE) // 2, rope1 + (d1 + _NOPE) // 2)  # the pages as bf16
        cp.async_copy_global_to_shared(rope_dst, row[:, None] + r[None, :], mask=(sr >= 0)[:, None])
        _, e0 = _row_bytes(ss, page0_rows, page0_bytes)
        _, e1 = _row_bytes(ss, page1_rows, page1_bytes)
        k = gl.arange(0, _SCALE_BYTES, layout=gl.SliceLayout(0, scale_l))
        row = gl.where(in0s, src0 + e0, src1 + e1)
        cp.async_copy_global_to_shared(scale_dst, row[:, None] + k[None, :], mask=(ss >= 0)[:, None])

    @gluon.jit
    def _dequantize_tile(nope, rope, scales, kv, deq_l: gl.constexpr, rope_l: gl.constexpr):
        """kv[:, 64c:64c+64] = e4m3 bytes of chunk c * 2^(scale byte c - 127); kv[:, 448:] = the RoPE channels.

        An e4m3 byte's sign, exponent and mantissa shifted into bf16's fields read as its value * 2^-120, for
        subnormal codes too (both formats' subnormals scale by 2^-126 there), so two exact power-of-two
        products give the value: integer ops instead of the converter's f16 round trip. (The quantizer never
        writes the NaN codes; they would read as 480.)"""
        for c in gl.static_range(_NOPE // 64):
            w = nope.slice(c * 64, 64, dim=1).load(deq_l).to(gl.uint16)
            x = (((w & 0x80) << 8) | ((w & 0x7F) << 4)).to(gl.bfloat16, bitcast=True) * 1.329227995784916e36  # 2^120
            e = scales.slice(c, 1, dim=1).load(deq_l)  # [BK, 1], broadcast along the chunk
            kv.slice(c * 64, 64, dim=1).store(x * gl.exp2(e.to(gl.float32) - 127.0).to(gl.bfloat16))
        kv.slice(_NOPE, _ROPE, dim=1).store(rope.load(rope_l))

    @gluon.jit
    def _load_fp8_rows(src0, rope0, idx0, src1, rope1, idx1, k0_len, page0_rows, page0_bytes, page1_rows,
                       page1_bytes, lo, hi, n_tiles, kv_smem, nope_smem, rope_smem, scale_smem, full, empty,
                       BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr, NUM_RAW: gl.constexpr):
        """Producer warps: copies NUM_RAW - 1 tiles ahead into staging; each landed tile dequantized into the
        ring once the math warpgroups free its buffer, then `full` (one arrival: the partition's)."""
        nw: gl.constexpr = gl.num_warps()
        nope_l: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [nw, 1], [1, 0])
        rope_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [nw, 1], [1, 0])
        scale_l: gl.constexpr = gl.BlockedLayout([1, 8], [32, 1], [nw, 1], [1, 0])
        deq_l: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [nw, 1], [1, 0])
        for j in range(NUM_RAW - 1):
            if j < n_tiles:
                sn, in0n, sr, in0r, ss, in0s = _read_slots(idx0, idx1, k0_len, lo + j * BLOCK_K, hi, BLOCK_K,
                                                           nope_l, rope_l, scale_l)
                _issue_tile(nope_smem.index(j), rope_smem.index(j), scale_smem.index(j), src0, rope0, src1, rope1,
                            page0_rows, page0_bytes, page1_rows, page1_bytes, sn, in0n, sr, in0r, ss, in0s,
                            nope_l, rope_l, scale_l)
            cp.commit_group()  # one group per tile, empty or not: wait_group counts tiles
        # the slots of the next tile to copy are read an iteration early: their loads land during a dequantization
        sn, in0n, sr, in0r, ss, in0s = _read_slots(idx0, idx1, k0_len, lo + (NUM_RAW - 1) * BLOCK_K, hi, BLOCK_K,
                                                   nope_l, rope_l, scale_l)
        for j in range(n_tiles):
            ahead = j + NUM_RAW - 1
            if ahead < n_tiles:  # its staging slot was freed by tile j - 1's dequantization
                r = ahead % NUM_RAW
                _issue_tile(nope_smem.index(r), rope_smem.index(r), scale_smem.index(r), src0, rope0, src1, rope1,
                            page0_rows, page0_bytes, page1_rows, page1_bytes, sn, in0n, sr, in0r, ss, in0s,
                            nope_l, rope_l, scale_l)
            cp.commit_group()
            sn, in0n, sr, in0r, ss, in0s = _read_slots(idx0, idx1, k0_len, lo + (ahead + 1) * BLOCK_K, hi, BLOCK_K,
                                                       nope_l, rope_l, scale_l)
            cp.wait_group(NUM_RAW - 1)  # this thread's copies of tile j landed
            gl.thread_barrier()  # ... and every load thread's
            b = j % NUM_BUF
            mbarrier.wait(empty.index(b), ((j // NUM_BUF) & 1) ^ 1)  # a fresh barrier passes phase 1
            r = j % NUM_RAW
            _dequantize_tile(nope_smem.index(r), rope_smem.index(r), scale_smem.index(r), kv_smem.index(b),
                             deq_l, rope_l)
            fence_async_shared()  # the stores, visible to the tensor cores' proxy
            mbarrier.arrive(full.index(b))
            gl.thread_barrier()  # staging slot r is read: the next tile's copies may overwrite it

    @gluon.jit
    def _sparse_attn_sm90_fp8_kernel(q_ptr, out_ptr, sink_ptr, part_o_ptr, part_lse_ptr,
                                     src0_ptr, rope0_ptr, idx0_ptr, k0_len, idx0_stride, page0_rows, page0_bytes,
                                     src1_ptr, rope1_ptr, idx1_ptr, k1_len, idx1_stride, page1_rows, page1_bytes,
                                     H, q_stride_t, q_stride_h, o_stride_t, o_stride_h, split_len, qk_scale,
                                     BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr, NUM_RAW: gl.constexpr,
                                     NUM_SPLITS: gl.constexpr, LOAD_WARPS: gl.constexpr, LOAD_REGS: gl.constexpr,
                                     num_warps: gl.constexpr):
        BH: gl.constexpr = 64
        D: gl.constexpr = 512
        dt: gl.constexpr = gl.bfloat16
        t = gl.program_id(0).to(gl.int64)
        hb = gl.program_id(1)
        split = gl.program_id(2)
        q_smem, kv_smem, p_smem, full, empty = _math_buffers(dt, BH, D, BLOCK_K, NUM_BUF)
        nope_smem = gl.allocate_shared_memory(gl.uint8, [NUM_RAW, BLOCK_K, 512],
                                              gl.SwizzledSharedLayout(16, 1, 1, [1, 0]))
        rope_smem = gl.allocate_shared_memory(dt, [NUM_RAW, BLOCK_K, _ROPE], gl.SwizzledSharedLayout(8, 1, 1, [1, 0]))
        scale_smem = gl.allocate_shared_memory(gl.uint8, [NUM_RAW, BLOCK_K, _SCALE_BYTES],
                                               gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        for i in gl.static_range(NUM_BUF):
            mbarrier.init(full.index(i), count=1)  # the load partition arrives once, after its barrier
            mbarrier.init(empty.index(i), count=1)

        _issue_q(q_ptr, q_smem, t, hb, H, q_stride_t, q_stride_h, BH, D)

        idx0, idx1, lo, hi, n_tiles = _program_list(idx0_ptr, idx1_ptr, t, idx0_stride, idx1_stride, k0_len, k1_len,
                                                    split, split_len, BLOCK_K)
        gl.warp_specialize([
            (_attend, (q_smem, kv_smem, p_smem, full, empty, idx0, idx1, k0_len, lo, hi, n_tiles, qk_scale,
                       out_ptr, sink_ptr, part_o_ptr, part_lse_ptr, t, hb, split, H, o_stride_t, o_stride_h,
                       BH, D, BLOCK_K, NUM_BUF, NUM_SPLITS)),
            (_load_fp8_rows, (src0_ptr, rope0_ptr, idx0, src1_ptr, rope1_ptr, idx1, k0_len, page0_rows,
                              page0_bytes, page1_rows, page1_bytes, lo, hi, n_tiles, kv_smem, nope_smem, rope_smem,
                              scale_smem, full, empty, BLOCK_K, NUM_BUF, NUM_RAW)),
        ], [LOAD_WARPS], [LOAD_REGS])


def layout_unsupported_reason(layout) -> str | None:
    """Why the kernel cannot read pages of `layout` (None if it can): it is written for V4's latent rows."""
    got = (layout.nope, layout.rope, layout.tile, layout.data_bytes, layout.scale_bytes)
    if got != (NOPE, ROPE, 64, DATA_BYTES, SCALE_BYTES):
        return (f"takes fp8_ds_mla pages of V4's latent layout (448 e4m3 + 64 bf16 channels, scale per 64, 8 scale "
                f"bytes); got nope/rope/tile/data/scale bytes {got}")
    return None


def sparse_attn_sm90_fp8(q: torch.Tensor, sources, sink: torch.Tensor, scale: float, *, num_raw: int | None = None,
                         num_splits: int | None = None) -> torch.Tensor:
    """sparse_attn_ref's contract for bf16 q over fp8_ds_mla pages of V4's layout, on Hopper (the caller,
    `sparse_attn_sm90`, has checked what it takes). Staging num_raw tiles deep (NUM_RAW)."""
    num_raw = NUM_RAW if num_raw is None else num_raw
    assert num_raw >= 2, "the staging ring needs at least 2 tiles (copies run num_raw - 1 ahead)"
    if q.shape[0] == 0:
        return torch.empty_like(q)
    plan = plan_launch(q, sources, BLOCK_K, num_splits)
    a0, a1 = plan.src0, plan.src1
    _sparse_attn_sm90_fp8_kernel[plan.grid](
        q, plan.out, sink, plan.part_o, plan.part_lse,
        a0.storage, a0.rope_view, a0.indices, a0.num_indices, a0.index_stride, a0.page_rows, a0.page_bytes,
        a1.storage, a1.rope_view, a1.indices, a1.num_indices, a1.index_stride, a1.page_rows, a1.page_bytes,
        q.shape[1], q.stride(0), q.stride(1), plan.out.stride(0), plan.out.stride(1), plan.split_len,
        scale * LOG2E, BLOCK_K=BLOCK_K, NUM_BUF=NUM_BUF, NUM_RAW=num_raw, NUM_SPLITS=plan.num_splits,
        LOAD_WARPS=LOAD_WARPS, LOAD_REGS=LOAD_REGS, num_warps=NUM_WARPS)
    return finish_launch(plan, sink)
