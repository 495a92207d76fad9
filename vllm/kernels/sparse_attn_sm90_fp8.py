"""The Hopper sparse MLA kernel over fp8_ds_mla pages (Gluon, SM 9.x): V4's KV cache read as stored.

The math warpgroups are the plain-row kernel's scorer and helper (`sparse_attn_sm90_attend._score` /
`_help`), on its ring too: two bf16 `[64, 512]` tiles. That ring and q leave no room for a staging ring,
so the load warps stage most of each tile's bytes in the ring tile itself. The NVMMA 128-byte-swizzled
tile is 8 column blocks of `[64 rows, 128 bytes]`, 8 KB each, block c holding channels [64c, 64c + 64).
A tile's cp.asyncs put:
- NoPE chunks 0 .. SIDE_CHUNKS - 1 (64 e4m3 bytes a row each) and the 8 UE8M0 scale bytes a tile EARLY,
  into a side buffer and a scale slot of their own (12 KB of the 17 KB the ring and q leave);
- the other NoPE chunks c, once the math frees the ring tile, in the second half of block c, unswizzled
  (`_raw_chunks`), and the 64 bf16 RoPE channels straight in their place, block 7.
So when the math frees a ring tile, the load warps issue its in-place copies and dequantize the side
chunks while those fly; then they dequantize chunk c in place: its bytes read, then block c written,
which overlaps no other chunk's bytes (the compiler puts a barrier between the reads and the writes).

H200, V4-Flash CSA 32K, against the same kernel with every chunk staged in place
(h200_sparse_attn_sm90_fp8_side.json): 128 requests 46.5 -> 41.0 us, 64 requests 33.0 -> 29.7, 1024
requests 311 -> 302. ncu of the in-place kernel showed its load warps' largest stall on the wait for a
tile's copies: those went out only once the math freed the tile, one tile in flight per CTA. Before that,
against 32-row tiles three deep with a staging ring beside them (h200_sparse_attn_sm90_fp8_inplace_trials.json):
49.3 -> 46.4 us at 128 requests.

Each load thread owns one row of a tile with one other thread: the row's addresses are computed with page
sizes as constants (no integer division). The dequantization works on four bytes a register
(`_e4m3_bits_as_bf16`) and takes each scale by its bits (`_scale_as_bf16`).

A page (`fp8_ds_mla.Fp8DsMlaLayout`) holds `block_size` rows of 576 data bytes (448 e4m3 + 64 bf16),
then their 8 scale bytes each.
"""

from __future__ import annotations

import torch

from vllm.kernels.sparse_attn_sm90_attend import (HAS_GLUON, LOAD_WARPS, SCORER_WARPS, finish_launch,
                                                  plan_launch)

BLOCK_K, NUM_BUF = 64, 2  # the plain-row kernel's ring; most of the staging lives in it
# NoPE chunks copied a tile early into the side buffer. 3 against 4 (16 KB, which fits with 0.6 KB to spare):
# 41.0 / 43.3 us at 128 requests (h200_sparse_attn_sm90_fp8_side.json).
SIDE_CHUNKS = 3
# Load warps' registers: none spilled (56 spill with the side buffer's second set of row slots).
LOAD_REGS = 64
NOPE, ROPE, DATA_BYTES, SCALE_BYTES = 448, 64, 576, 8  # the V4 latent layout the kernel is written for

if HAS_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

    from vllm.kernels.sparse_attn_sm90_attend import (_HELPER_REGS, _HELPER_WARPS, _help, _issue_q, _program_list,
                                                      _score, _scorer_buffers, _slot_loads)

    # the layout, as the kernels see it
    _NOPE, _ROPE, _DATA_BYTES, _SCALE_BYTES = (gl.constexpr(v) for v in (NOPE, ROPE, DATA_BYTES, SCALE_BYTES))
    _CHUNKS, _SIDE = gl.constexpr(NOPE // 64), gl.constexpr(SIDE_CHUNKS)

    @gluon.jit
    def _row_offsets(slots, page_bytes, PAGE_ROWS: gl.constexpr):
        """Byte offsets of rows `slots` (-1 read as 0) in pages of PAGE_ROWS rows: data start, scales start."""
        safe = gl.where(slots >= 0, slots, 0)
        page = (safe // PAGE_ROWS).to(gl.int64) * page_bytes
        row = (safe % PAGE_ROWS).to(gl.int64)
        return page + row * _DATA_BYTES, page + PAGE_ROWS * _DATA_BYTES + row * _SCALE_BYTES

    @gluon.jit
    def _raw_chunks(kv_smem):
        """The ring `[NUM_BUF, BK, 512]` bf16 as bytes `[NUM_BUF * 16 half blocks, BK, 64]`, unswizzled: a column
        block is BK rows of 128 bytes, so each half holds one `[BK, 64]` chunk of e4m3 bytes."""
        NB: gl.constexpr = kv_smem.shape[0]
        BK: gl.constexpr = kv_smem.shape[1]
        plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        return kv_smem._reinterpret(gl.uint8, [NB * 16, BK, 64], plain)

    @gluon.jit
    def _staged(raw, b, c):
        """Where NoPE chunk c of ring tile b is staged (`raw`: `_raw_chunks`): the second half of column block
        c, the block it dequantizes into."""
        return raw.index(16 * b + 2 * c + 1)

    @gluon.jit
    def _row_addresses(sources, tile_slots, PAGE0_ROWS: gl.constexpr, PAGE1_ROWS: gl.constexpr):
        """(data, scales, live) of tile rows: each row's first data byte and first scale byte in its source, and
        whether it is a row (-1 slots read zeros). `sources`: (src0, src1, page0_bytes, page1_bytes);
        `tile_slots`: the rows' slot loads from `_slot_loads`."""
        src0, src1, page0_bytes, page1_bytes = sources
        s0, s1, in0 = tile_slots
        slots = gl.where(in0, s0, s1)
        d0, e0 = _row_offsets(slots, page0_bytes, PAGE0_ROWS)
        d1, e1 = _row_offsets(slots, page1_bytes, PAGE1_ROWS)
        return gl.where(in0, src0 + d0, src1 + d1), gl.where(in0, src0 + e0, src1 + e1), (slots >= 0)[:, None]

    @gluon.jit
    def _copy_chunk(dst, rows, k: gl.constexpr, byte_l: gl.constexpr):
        """cp.async NoPE chunk k (64 e4m3 bytes) of the tile rows (`_row_addresses`) into dst `[BK, 64]` bytes."""
        data, _, live = rows
        c = gl.arange(0, 64, layout=gl.SliceLayout(0, byte_l))
        cp.async_copy_global_to_shared(dst, data[:, None] + (64 * k + c)[None, :], mask=live)

    @gluon.jit
    def _issue_early(side, scale_dst, rows, byte_l: gl.constexpr, rope_l: gl.constexpr):
        """cp.async the tile rows' (`_row_addresses`) NoPE chunks 0 .. _SIDE - 1 into the side buffer and their
        scales into scale_dst: the part of a tile copied before its ring tile is free."""
        for k in gl.static_range(_SIDE):
            _copy_chunk(side.index(k), rows, k, byte_l)
        _, scales, live = rows
        scales = gl.convert_layout(scales, gl.SliceLayout(1, rope_l))
        k8 = gl.arange(0, _SCALE_BYTES, layout=gl.SliceLayout(0, rope_l))
        cp.async_copy_global_to_shared(scale_dst, scales[:, None] + k8[None, :], mask=gl.convert_layout(live, rope_l))

    @gluon.jit
    def _issue_in_place(kv, raw, b, rows, byte_l: gl.constexpr, rope_l: gl.constexpr):
        """cp.async the rest of the tile rows (`_row_addresses`) into ring tile b (`kv`, its bytes `raw`): NoPE
        chunks _SIDE .. _CHUNKS - 1 staged, the RoPE channels in place."""
        for k in gl.static_range(_SIDE, _CHUNKS):
            _copy_chunk(_staged(raw, b, k), rows, k, byte_l)
        data, _, live = rows
        rope = gl.convert_layout(data + _NOPE, gl.SliceLayout(1, rope_l)).to(gl.pointer_type(gl.bfloat16),
                                                                             bitcast=True)
        r = gl.arange(0, _ROPE, layout=gl.SliceLayout(0, rope_l))
        cp.async_copy_global_to_shared(kv.slice(_NOPE, _ROPE, dim=1), rope[:, None] + r[None, :],
                                       mask=gl.convert_layout(live, rope_l))

    @gluon.jit
    def _e4m3_bits_as_bf16(w):
        """e4m3 bytes -> bf16 of value * 2^-120, four bytes a register: each byte's sign replicated into the
        byte above it (prmt), shifted into bf16's fields and masked. An e4m3 byte's sign, exponent and
        mantissa in bf16's fields read as its value * 2^-120, for subnormal codes too (both formats'
        subnormals scale by 2^-126 there). The quantizer never writes the NaN codes; they would read as 480."""
        return gl.inline_asm_elementwise(
            "prmt.b32 $0, $2, 0, 0x9180; prmt.b32 $1, $2, 0, 0xB3A2; shl.b32 $0, $0, 4; shl.b32 $1, $1, 4; "
            "and.b32 $0, $0, 0x87F087F0; and.b32 $1, $1, 0x87F087F0;",
            "=r,=r,r", [w], gl.bfloat16, True, 4)

    @gluon.jit
    def _scale_as_bf16(e):
        """UE8M0 bytes -> bf16 2^(e - 127), by the bits: e << 7 is that power's exponent field (255 reads as
        inf, as exp2(128) would), and 0 is bf16's subnormal 2^-127."""
        bits = gl.where(e == 0, 64, e.to(gl.int16) << 7).to(gl.int16)
        return bits.to(gl.bfloat16, bitcast=True)

    @gluon.jit
    def _dequantize_chunk(kv, staged, scales, c: gl.constexpr, byte_l: gl.constexpr):
        """Column block c of a ring tile (`kv`) = NoPE chunk c's e4m3 bytes (`staged`) * 2^(scale byte c - 127):
        two exact power-of-two products."""
        x = _e4m3_bits_as_bf16(staged.load(byte_l)) * 1.329227995784916e36  # 2^120
        e = scales.slice(c, 1, dim=1).load(byte_l)  # [BK, 1], broadcast along the chunk
        kv.slice(64 * c, 64, dim=1).store(x * _scale_as_bf16(e))

    @gluon.jit
    def _load_fp8_rows(src0, idx0, src1, idx1, k0_len, page0_bytes, page1_bytes, lo, hi, n_tiles, kv_smem,
                       scale_smem, side, full, empty, BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr,
                       PAGE0_ROWS: gl.constexpr, PAGE1_ROWS: gl.constexpr):
        """Producer warps, per tile j: once the math frees its ring tile, its in-place copies go out; its side
        chunks (copied a tile early) are dequantized while they fly; tile j + 1's early copies go out; tile j's
        in-place chunks land and are dequantized, and `full` arrived on (once: the partition's). Copy groups
        alternate early (j + 1) / in place (j), so a wait for all but the newest group waits for the older.
        A tile's row addresses are computed twice (early and in place), a few integer instructions, rather than
        two more 64-bit pointers held live across an iteration on load warps kept at LOAD_REGS."""
        nw: gl.constexpr = gl.num_warps()
        byte_l: gl.constexpr = gl.BlockedLayout([1, 16], [16, 2], [nw, 1], [1, 0])  # two threads a row
        rope_l: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [nw, 1], [1, 0])  # the same rows
        rows = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, byte_l))
        raw = _raw_chunks(kv_smem)
        sources = (src0, src1, page0_bytes, page1_bytes)
        cur = _slot_loads(idx0, idx1, k0_len, lo + rows, hi)  # tile j's slots
        if n_tiles > 0:
            _issue_early(side, scale_smem.index(0), _row_addresses(sources, cur, PAGE0_ROWS, PAGE1_ROWS), byte_l,
                         rope_l)
        cp.commit_group()
        nxt = _slot_loads(idx0, idx1, k0_len, lo + BLOCK_K + rows, hi)  # tile j + 1's, a tile early
        for j in range(n_tiles):
            b = j % NUM_BUF
            kv = kv_smem.index(b)
            mbarrier.wait(empty.index(b), ((j // NUM_BUF) & 1) ^ 1)  # tile j - 2's math done (fresh: phase 1 passes)
            _issue_in_place(kv, raw, b, _row_addresses(sources, cur, PAGE0_ROWS, PAGE1_ROWS), byte_l, rope_l)
            cp.commit_group()
            cp.wait_group(1)  # this thread's early copies of tile j landed
            gl.thread_barrier()  # ... and every load thread's
            for c in gl.static_range(_SIDE):
                _dequantize_chunk(kv, side.index(c), scale_smem.index(b), c, byte_l)
            gl.thread_barrier()  # the side buffer read before it is copied over
            if j + 1 < n_tiles:
                _issue_early(side, scale_smem.index((j + 1) % NUM_BUF),
                             _row_addresses(sources, nxt, PAGE0_ROWS, PAGE1_ROWS), byte_l, rope_l)
            cp.commit_group()
            cur = nxt
            nxt = _slot_loads(idx0, idx1, k0_len, lo + (j + 2) * BLOCK_K + rows, hi)
            cp.wait_group(1)  # tile j's in-place copies landed
            gl.thread_barrier()
            for c in gl.static_range(_SIDE, _CHUNKS):
                _dequantize_chunk(kv, _staged(raw, b, c), scale_smem.index(b), c, byte_l)
            fence_async_shared()  # the stores, visible to the tensor cores' proxy
            mbarrier.arrive(full.index(b))

    @gluon.jit
    def _sparse_attn_sm90_fp8_kernel(q_ptr, out_ptr, sink_ptr, part_o_ptr, part_lse_ptr,
                                     src0_ptr, idx0_ptr, k0_len, idx0_stride, page0_bytes,
                                     src1_ptr, idx1_ptr, k1_len, idx1_stride, page1_bytes,
                                     H, q_stride_t, q_stride_h, o_stride_t, o_stride_h, split_len, qk_scale,
                                     PAGE0_ROWS: gl.constexpr, PAGE1_ROWS: gl.constexpr, BLOCK_K: gl.constexpr,
                                     NUM_BUF: gl.constexpr, NUM_SPLITS: gl.constexpr, LOAD_WARPS: gl.constexpr,
                                     LOAD_REGS: gl.constexpr, num_warps: gl.constexpr):
        BH: gl.constexpr = 64
        D: gl.constexpr = 512
        dt: gl.constexpr = gl.bfloat16
        t = gl.program_id(0).to(gl.int64)
        hb = gl.program_id(1)
        split = gl.program_id(2)
        bufs = _scorer_buffers(dt, BH, D, BLOCK_K, NUM_BUF)
        q_smem, kv_smem, full, empty = bufs[0], bufs[1], bufs[5], bufs[6]  # what this partition and the loaders use
        plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        scale_smem = gl.allocate_shared_memory(gl.uint8, [NUM_BUF, BLOCK_K, _SCALE_BYTES], plain)
        side = gl.allocate_shared_memory(gl.uint8, [_SIDE, BLOCK_K, 64], plain)  # early NoPE chunks
        for i in gl.static_range(NUM_BUF):
            mbarrier.init(full.index(i), count=1)  # the load partition arrives once, after its barrier

        _issue_q(q_ptr, q_smem, t, hb, H, q_stride_t, q_stride_h, BH, D)

        idx0, idx1, lo, hi, n_tiles = _program_list(idx0_ptr, idx1_ptr, t, idx0_stride, idx1_stride, k0_len, k1_len,
                                                    split, split_len, BLOCK_K)
        dest = (out_ptr, sink_ptr, part_o_ptr, part_lse_ptr, t, hb, split, H, o_stride_t, o_stride_h)
        gl.warp_specialize([
            (_score, (bufs, idx0, idx1, k0_len, lo, hi, n_tiles, qk_scale, dest, BH, D, BLOCK_K, NUM_BUF, NUM_SPLITS)),
            (_help, (bufs, n_tiles, dest, BH, D, BLOCK_K, NUM_BUF, NUM_SPLITS)),
            (_load_fp8_rows, (src0_ptr, idx0, src1_ptr, idx1, k0_len, page0_bytes, page1_bytes, lo, hi, n_tiles,
                              kv_smem, scale_smem, side, full, empty, BLOCK_K, NUM_BUF, PAGE0_ROWS,
                              PAGE1_ROWS)),
        ], [_HELPER_WARPS, LOAD_WARPS], [_HELPER_REGS, LOAD_REGS])


def layout_unsupported_reason(layout) -> str | None:
    """Why the kernel cannot read pages of `layout` (None if it can): it is written for V4's latent rows."""
    got = (layout.nope, layout.rope, layout.tile, layout.data_bytes, layout.scale_bytes)
    if got != (NOPE, ROPE, 64, DATA_BYTES, SCALE_BYTES):
        return (f"takes fp8_ds_mla pages of V4's latent layout (448 e4m3 + 64 bf16 channels, scale per 64, 8 scale "
                f"bytes); got nope/rope/tile/data/scale bytes {got}")
    return None


def sparse_attn_sm90_fp8(q: torch.Tensor, sources, sink: torch.Tensor, scale: float, *,
                         num_splits: int | None = None) -> torch.Tensor:
    """sparse_attn_ref's contract for bf16 q over fp8_ds_mla pages of V4's layout, on Hopper (the caller,
    `sparse_attn_sm90`, has checked what it takes). The kernel is compiled per pair of page sizes (a few per
    model: window and compressed pages)."""
    if q.shape[0] == 0:
        return torch.empty_like(q)
    plan = plan_launch(q, sources, BLOCK_K, num_splits)
    _sparse_attn_sm90_fp8_kernel[plan.grid](
        *plan.kernel_args(q, sink, scale, lambda src: src.page_bytes), PAGE0_ROWS=plan.src0.page_rows,
        PAGE1_ROWS=plan.src1.page_rows, BLOCK_K=BLOCK_K, NUM_BUF=NUM_BUF, NUM_SPLITS=plan.num_splits,
        LOAD_WARPS=LOAD_WARPS, LOAD_REGS=LOAD_REGS, num_warps=SCORER_WARPS)
    return finish_launch(plan, sink)
