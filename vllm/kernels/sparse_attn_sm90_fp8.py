"""The Hopper sparse MLA kernel over fp8_ds_mla pages (Gluon, SM 9.x): V4's KV cache read as stored.

The math warpgroups are the plain-row kernel's scorer and helper (`sparse_attn_sm90_attend._score` /
`_help`), over a ring of NUM_BUF bf16 `[BLOCK_K, 512]` tiles. The load warps differ: they cp.async each
row's bytes as stored into a staging ring of NUM_RAW tiles, running NUM_RAW - 1 tiles ahead, as three
pieces: data bytes [0, 512) (448 e4m3 NoPE channels, then the first 32 bf16 RoPE channels), [512, 576)
(the other 32) and the 8 UE8M0 scale bytes. When a tile has landed and the math warpgroups have freed a
ring tile, they dequantize it there (64 channels a scale, exact in bf16), copy the RoPE channels into its
last 64 columns and arrive on its `full` barrier.

What sets the pace is the load warps' instructions a tile (one warp per scheduler next to the math
warps), so each row's addresses are computed once, with page sizes as constants (no integer division),
and the dequantization works on four bytes a register (`_e4m3_bits_as_bf16`).

A page (`fp8_ds_mla.Fp8DsMlaLayout`) holds `block_size` rows of 576 data bytes (448 e4m3 + 64 bf16),
then their 8 scale bytes each.
"""

from __future__ import annotations

import torch

from vllm.kernels.sparse_attn_sm90_attend import (HAS_GLUON, LOAD_WARPS, SCORER_WARPS, finish_launch,
                                                  plan_launch)

# 32-row ring tiles three deep (the helper's PV of one tile runs while the scorer takes the next, so a third
# tile is what the load warps fill meanwhile), staging two deep: with q's 64 KB, 206 KB of the 227.
# H200, V4-Flash CSA 32K, 64 / 128 requests (h200_sparse_attn_sm90_fp8_v2_trials.json): ring 2 deep with
# staging 4 deep 68.6 us at 128; staging 3 deep 34.4 / 50.2; this 33.7 / 49.5.
BLOCK_K, NUM_BUF, NUM_RAW = 32, 3, 2
# Load warps' registers; the scorer takes what the helper (160) and they leave, up to 256. 88 or 96: the scorer
# at 256, 33.7 / 49.5 and 41.5 / 50.4 us; 104: the scorer at 248, 43.0 / 66.3. Below 104 ptxas keeps one
# value, the shared-memory base, on the stack from the partitions' entry to the load warps' first use: 4
# bytes stored and loaded once a program, outside the loop (ENTRY_SPILL_BYTES, checked in the tests).
LOAD_REGS, ENTRY_SPILL_BYTES = 88, 8
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

    @gluon.jit
    def _row_offsets(slots, page_bytes, PAGE_ROWS: gl.constexpr):
        """Byte offsets of rows `slots` (-1 read as 0) in pages of PAGE_ROWS rows: data start, scales start."""
        safe = gl.where(slots >= 0, slots, 0)
        page = (safe // PAGE_ROWS).to(gl.int64) * page_bytes
        row = (safe % PAGE_ROWS).to(gl.int64)
        return page + row * _DATA_BYTES, page + PAGE_ROWS * _DATA_BYTES + row * _SCALE_BYTES

    @gluon.jit
    def _issue_tile(head_dst, tail_dst, scale_dst, src0, src1, page0_bytes, page1_bytes, s0, s1, in0,
                    PAGE0_ROWS: gl.constexpr, PAGE1_ROWS: gl.constexpr, head_l: gl.constexpr,
                    scale_l: gl.constexpr):
        """cp.async a tile's rows into staging, from their slots' loads (`_slot_loads`, an iteration earlier):
        data bytes [0, 512) and [512, 576), and the scale bytes; -1 rows are zero-filled."""
        slots = gl.where(in0, s0, s1)
        d0, e0 = _row_offsets(slots, page0_bytes, PAGE0_ROWS)
        d1, e1 = _row_offsets(slots, page1_bytes, PAGE1_ROWS)
        live = (slots >= 0)[:, None]
        data = gl.where(in0, src0 + d0, src1 + d1)
        c = gl.arange(0, 512, layout=gl.SliceLayout(0, head_l))
        cp.async_copy_global_to_shared(head_dst, data[:, None] + c[None, :], mask=live)
        c = gl.arange(0, _DATA_BYTES - 512, layout=gl.SliceLayout(0, head_l))
        cp.async_copy_global_to_shared(tail_dst, data[:, None] + (512 + c)[None, :], mask=live)
        scales = gl.convert_layout(gl.where(in0, src0 + e0, src1 + e1), gl.SliceLayout(1, scale_l))
        k = gl.arange(0, _SCALE_BYTES, layout=gl.SliceLayout(0, scale_l))
        cp.async_copy_global_to_shared(scale_dst, scales[:, None] + k[None, :], mask=gl.convert_layout(live, scale_l))

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
    def _dequantize_tile(head, tail, scales, kv, deq_l: gl.constexpr):
        """kv[:, 64c:64c+64] = e4m3 bytes of chunk c * 2^(scale byte c - 127), two exact power-of-two
        products; kv[:, 448:] = the RoPE channels (staged bytes read as bf16)."""
        for c in gl.static_range(_NOPE // 64):
            x = _e4m3_bits_as_bf16(head.slice(c * 64, 64, dim=1).load(deq_l)) * 1.329227995784916e36  # 2^120
            e = scales.slice(c, 1, dim=1).load(deq_l)  # [BK, 1], broadcast along the chunk
            kv.slice(c * 64, 64, dim=1).store(x * gl.exp2(e.to(gl.float32) - 127.0).to(gl.bfloat16))
        BK: gl.constexpr = head.shape[0]
        HALF: gl.constexpr = _ROPE // 2
        plain: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 1, [1, 0])  # staging is unswizzled
        first = head._reinterpret(gl.bfloat16, [BK, 256], plain).slice(256 - HALF, HALF, dim=1)
        kv.slice(_NOPE, HALF, dim=1).store(first.load(deq_l))
        kv.slice(_NOPE + HALF, HALF, dim=1).store(tail._reinterpret(gl.bfloat16, [BK, HALF], plain).load(deq_l))

    @gluon.jit
    def _load_fp8_rows(src0, idx0, src1, idx1, k0_len, page0_bytes, page1_bytes, lo, hi, n_tiles, kv_smem,
                       head_smem, tail_smem, scale_smem, full, empty, BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr,
                       NUM_RAW: gl.constexpr, PAGE0_ROWS: gl.constexpr, PAGE1_ROWS: gl.constexpr):
        """Producer warps: copies NUM_RAW - 1 tiles ahead into staging; each landed tile dequantized into the
        ring once the math warpgroups free its buffer, then `full` (one arrival: the partition's). A row a
        thread: its addresses are computed once for all three pieces."""
        nw: gl.constexpr = gl.num_warps()
        head_l: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [nw, 1], [1, 0])
        scale_l: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [nw, 1], [1, 0])  # the same rows, repeated
        rows = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, head_l))
        for j in range(NUM_RAW - 1):
            if j < n_tiles:
                s0, s1, in0 = _slot_loads(idx0, idx1, k0_len, lo + j * BLOCK_K + rows, hi)
                _issue_tile(head_smem.index(j), tail_smem.index(j), scale_smem.index(j), src0, src1, page0_bytes,
                            page1_bytes, s0, s1, in0, PAGE0_ROWS, PAGE1_ROWS, head_l, scale_l)
            cp.commit_group()  # one group per tile, empty or not: wait_group counts tiles
        # the slots of the next tile to copy are loaded an iteration early and combined when used, so their
        # loads land during a dequantization
        s0, s1, in0 = _slot_loads(idx0, idx1, k0_len, lo + (NUM_RAW - 1) * BLOCK_K + rows, hi)
        for j in range(n_tiles):
            ahead = j + NUM_RAW - 1
            if ahead < n_tiles:  # its staging slot was freed by tile j - 1's dequantization
                r = ahead % NUM_RAW
                _issue_tile(head_smem.index(r), tail_smem.index(r), scale_smem.index(r), src0, src1, page0_bytes,
                            page1_bytes, s0, s1, in0, PAGE0_ROWS, PAGE1_ROWS, head_l, scale_l)
            cp.commit_group()
            s0, s1, in0 = _slot_loads(idx0, idx1, k0_len, lo + (ahead + 1) * BLOCK_K + rows, hi)
            cp.wait_group(NUM_RAW - 1)  # this thread's copies of tile j landed
            gl.thread_barrier()  # ... and every load thread's
            b = j % NUM_BUF
            mbarrier.wait(empty.index(b), ((j // NUM_BUF) & 1) ^ 1)  # a fresh barrier passes phase 1
            r = j % NUM_RAW
            _dequantize_tile(head_smem.index(r), tail_smem.index(r), scale_smem.index(r), kv_smem.index(b), head_l)
            fence_async_shared()  # the stores, visible to the tensor cores' proxy
            mbarrier.arrive(full.index(b))
            gl.thread_barrier()  # staging slot r is read: the next tile's copies may overwrite it

    @gluon.jit
    def _sparse_attn_sm90_fp8_kernel(q_ptr, out_ptr, sink_ptr, part_o_ptr, part_lse_ptr,
                                     src0_ptr, idx0_ptr, k0_len, idx0_stride, page0_bytes,
                                     src1_ptr, idx1_ptr, k1_len, idx1_stride, page1_bytes,
                                     H, q_stride_t, q_stride_h, o_stride_t, o_stride_h, split_len, qk_scale,
                                     PAGE0_ROWS: gl.constexpr, PAGE1_ROWS: gl.constexpr, BLOCK_K: gl.constexpr,
                                     NUM_BUF: gl.constexpr, NUM_RAW: gl.constexpr, NUM_SPLITS: gl.constexpr,
                                     LOAD_WARPS: gl.constexpr, LOAD_REGS: gl.constexpr, num_warps: gl.constexpr):
        BH: gl.constexpr = 64
        D: gl.constexpr = 512
        dt: gl.constexpr = gl.bfloat16
        t = gl.program_id(0).to(gl.int64)
        hb = gl.program_id(1)
        split = gl.program_id(2)
        bufs = _scorer_buffers(dt, BH, D, BLOCK_K, NUM_BUF)
        q_smem, kv_smem, full, empty = bufs[0], bufs[1], bufs[5], bufs[6]  # what this partition and the loaders use
        plain: gl.constexpr = gl.SwizzledSharedLayout(16, 1, 1, [1, 0])
        head_smem = gl.allocate_shared_memory(gl.uint8, [NUM_RAW, BLOCK_K, 512], plain)
        tail_smem = gl.allocate_shared_memory(gl.uint8, [NUM_RAW, BLOCK_K, _DATA_BYTES - 512], plain)
        scale_smem = gl.allocate_shared_memory(gl.uint8, [NUM_RAW, BLOCK_K, _SCALE_BYTES],
                                               gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
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
                              kv_smem, head_smem, tail_smem, scale_smem, full, empty, BLOCK_K, NUM_BUF, NUM_RAW,
                              PAGE0_ROWS, PAGE1_ROWS)),
        ], [_HELPER_WARPS, LOAD_WARPS], [_HELPER_REGS, LOAD_REGS])


def layout_unsupported_reason(layout) -> str | None:
    """Why the kernel cannot read pages of `layout` (None if it can): it is written for V4's latent rows."""
    got = (layout.nope, layout.rope, layout.tile, layout.data_bytes, layout.scale_bytes)
    if got != (NOPE, ROPE, 64, DATA_BYTES, SCALE_BYTES):
        return (f"takes fp8_ds_mla pages of V4's latent layout (448 e4m3 + 64 bf16 channels, scale per 64, 8 scale "
                f"bytes); got nope/rope/tile/data/scale bytes {got}")
    return None


def sparse_attn_sm90_fp8(q: torch.Tensor, sources, sink: torch.Tensor, scale: float, *, num_buf: int | None = None,
                         num_raw: int | None = None, num_splits: int | None = None) -> torch.Tensor:
    """sparse_attn_ref's contract for bf16 q over fp8_ds_mla pages of V4's layout, on Hopper (the caller,
    `sparse_attn_sm90`, has checked what it takes). A ring num_buf tiles deep (NUM_BUF), staging num_raw
    (NUM_RAW). The kernel is compiled per pair of page sizes (a few per model: window and compressed pages)."""
    num_buf = NUM_BUF if num_buf is None else num_buf
    num_raw = NUM_RAW if num_raw is None else num_raw
    assert num_buf >= 2 and num_raw >= 2, "a ring of at least 2 tiles; staging of at least 2 (copies run ahead)"
    if q.shape[0] == 0:
        return torch.empty_like(q)
    plan = plan_launch(q, sources, BLOCK_K, num_splits)
    _sparse_attn_sm90_fp8_kernel[plan.grid](
        *plan.kernel_args(q, sink, scale, lambda src: src.page_bytes), PAGE0_ROWS=plan.src0.page_rows,
        PAGE1_ROWS=plan.src1.page_rows, BLOCK_K=BLOCK_K, NUM_BUF=num_buf, NUM_RAW=num_raw,
        NUM_SPLITS=plan.num_splits, LOAD_WARPS=LOAD_WARPS, LOAD_REGS=LOAD_REGS, num_warps=SCORER_WARPS)
    return finish_launch(plan, sink)
