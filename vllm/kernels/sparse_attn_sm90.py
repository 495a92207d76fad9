"""Sparse MLA decode for Hopper (SM 9.x) in Gluon: the portable kernel's contract, explicit warp roles.

The portable Triton kernel (`sparse_attn.py`) leaves two things to the compiler that it cannot do
for gathered rows: its pipeliner waits for every row copy at the top of each step (the copies'
addresses come from an index read in the same step), and a dot feeding another dot gets all 8
warps along the 64 heads, so both warpgroups compute the same scores. Gluon states both:

- load warps (a warp-specialized partition with few registers) read each tile's slots and cp.async
  its rows into a ring of NUM_BUF shared-memory tiles; an mbarrier per tile says "landed" (the
  copies' own arrival) and one says "consumed";
- two math warpgroups (the registers freed by the load warps: a [64, 512] fp32 accumulator is 128
  a thread) run QK on the tensor cores (wgmma) with the warpgroups on different rows of the tile
  (`[4, 2]` warps), P through shared memory, PV with each warpgroup on half the 512 channels.

Plain (bf16/fp16) latent rows, all the heads of a query in blocks of 64 (a wgmma's M), two
sources (window rows, compressed entries) as one list. The sink, the -1 skips, the splits of the
list and their merge are the portable kernel's (`attn_splits.py`). fp8_ds_mla pages and
small batches take the portable kernel (`takes`).
"""

from __future__ import annotations

import functools

import torch

from vllm.kernels import sparse_attn as portable
from vllm.kernels.attn_splits import merge_splits, plan_splits
from vllm.kernels._triton import HAS_TRITON, triton

try:  # Gluon ships with Triton >= 3.5; without it the portable kernel serves Hopper too
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                                  warpgroup_mma_wait)

    HAS_GLUON = HAS_TRITON
except ImportError:  # pragma: no cover - depends on the Triton version
    HAS_GLUON = False

BLOCK_H = 64  # heads a program: one wgmma M
NUM_WARPS = 8  # two math warpgroups (the load warps come on top)
MIN_WORK = 8 * 640  # (query, head block) programs x rows a query: see big_enough
# 64-row tiles in two buffers at every batch: against 32-row tiles four deep, H200, V4-Flash CSA 32K,
# 32 / 64 / 128 requests: 21.8 / 29.8 / 41.3 us vs 23.6 / 34.0 / 50.8 (h200_sparse_attn_sm90_sweep.json)
BLOCK_K, NUM_BUF = 64, 2
LOAD_WARPS = 4  # fewer spill their row addresses
# registers a load thread per tile height: the most that leave the math warpgroups unspilled
# (compile-only check: tests/kernels/test_sparse_attn_sm90.py)
LOAD_REGS = {64: 56, 32: 64}
LOG2E = 1.4426950408889634

if HAS_GLUON:

    @gluon.jit
    def _tile_slots(idx0_ptr, idx1_ptr, k0_len, pos, hi):
        """Slots of list positions `pos` of [src0 indices | src1 indices] (-1 past hi); the source of each."""
        in0 = pos < k0_len
        live = pos < hi
        s0 = gl.load(idx0_ptr + pos, mask=live & in0, other=-1)
        s1 = gl.load(idx1_ptr + (pos - k0_len), mask=live & (pos >= k0_len), other=-1)
        return gl.where(in0, s0, s1).to(gl.int32), in0

    @gluon.jit
    def _issue_rows(dst, src0_ptr, src1_ptr, row0_stride, row1_stride, slots, in0, cols):
        """cp.async the rows at `slots` (both sources, zero-filled where -1) into the `[BK, D]` tile dst."""
        valid = slots >= 0
        safe = gl.where(valid, slots, 0).to(gl.int64)
        off0 = safe * row0_stride
        off1 = safe * row1_stride
        row = gl.where(in0, src0_ptr + off0, src1_ptr + off1)  # per row, not per 16-byte piece
        cp.async_copy_global_to_shared(dst, row[:, None] + cols[None, :], mask=valid[:, None])

    @gluon.jit
    def _load_rows(src0_ptr, idx0, src1_ptr, idx1, k0_len, row0_stride, row1_stride, lo, hi, n_tiles, kv_smem,
                   full, empty, BLOCK_K: gl.constexpr, D: gl.constexpr, NUM_BUF: gl.constexpr):
        """Producer warps: each tile's slots, then its rows by cp.async into the ring; a tile's `full` barrier
        completes when every producer thread's copies have landed. A slot is read before waiting for the
        buffer, so the read overlaps the wait."""
        # a warp copies 4 rows x 128 bytes a step: a thread computes the addresses of 4 rows of a 64-row tile
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [gl.num_warps(), 1], [1, 0])
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
        rows = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, ld))
        for j in range(n_tiles):
            b = j % NUM_BUF
            slots, in0 = _tile_slots(idx0, idx1, k0_len, lo + j * BLOCK_K + rows, hi)
            mbarrier.wait(empty.index(b), ((j // NUM_BUF) & 1) ^ 1)  # a fresh barrier passes phase 1
            _issue_rows(kv_smem.index(b), src0_ptr, src1_ptr, row0_stride, row1_stride, slots, in0, cols)
            cp.mbarrier_arrive(full.index(b), increment_count=False)

    @gluon.jit
    def _store_output(m, l_sum, acc, out_ptr, sink_ptr, part_o_ptr, part_lse_ptr, t, hb, split, H, o_stride_t,
                      o_stride_h, BH: gl.constexpr, D: gl.constexpr, NUM_SPLITS: gl.constexpr):
        """The normalized output with the sink (one split), or this split's output and natural-log LSE."""
        o_layout: gl.constexpr = acc.type.layout
        dt: gl.constexpr = out_ptr.dtype.element_ty
        heads = hb * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, o_layout))
        hmask = heads < H
        ocols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        m_o = gl.convert_layout(m, gl.SliceLayout(1, o_layout))
        l_o = gl.convert_layout(l_sum, gl.SliceLayout(1, o_layout))
        if NUM_SPLITS == 1:
            sink = gl.load(sink_ptr + heads, mask=hmask, other=0.0) * 1.4426950408889634
            mf = gl.maximum(m_o, sink)
            w = gl.exp2(m_o - mf)
            norm = w / (l_o * w + gl.exp2(sink - mf))
            o_rows = out_ptr + t * o_stride_t + heads.to(gl.int64)[:, None] * o_stride_h
            gl.store(o_rows + ocols[None, :], (acc * norm[:, None]).to(dt), mask=hmask[:, None])
        else:  # this split's normalized output and natural-log LSE (-inf when it saw no valid row)
            row = (t * NUM_SPLITS + split) * H + heads
            lse = gl.where(l_o > 0, (m_o + gl.log2(gl.maximum(l_o, 1e-30))) * 0.6931471805599453, float("-inf"))
            den = gl.maximum(l_o, 1e-30)
            gl.store(part_o_ptr + row.to(gl.int64)[:, None] * D + ocols[None, :], acc / den[:, None],
                     mask=hmask[:, None])
            gl.store(part_lse_ptr + row, lse, mask=hmask)

    @gluon.jit
    def _attend(q_smem, kv_smem, p_smem, full, empty, idx0, idx1, k0_len, lo, hi, n_tiles, qk_scale,
                out_ptr, sink_ptr, part_o_ptr, part_lse_ptr, t, hb, split, H, o_stride_t, o_stride_h,
                BH: gl.constexpr, D: gl.constexpr, BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr,
                NUM_SPLITS: gl.constexpr):
        """Consumer warpgroups: per tile S = q K^T (the warpgroups on different rows), online softmax in log2
        units, P through shared memory, acc += P V (each warpgroup on half the channels); then the output."""
        dt: gl.constexpr = q_smem.dtype
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                           instr_shape=[16, BLOCK_K // 2, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                           instr_shape=[16, D // 2, 16])
        kcol = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, s_layout))
        m = gl.full([BH], -1e30, gl.float32, layout=gl.SliceLayout(1, s_layout))  # finite: alpha stays 0/1
        l_sum = gl.zeros([BH], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([BH, D], gl.float32, layout=o_layout)
        for j in range(n_tiles):
            b = j % NUM_BUF
            cur, _ = _tile_slots(idx0, idx1, k0_len, lo + j * BLOCK_K + kcol, hi)  # the producer read it: cached
            mbarrier.wait(full.index(b), (j // NUM_BUF) & 1)
            fence_async_shared()  # the copies, visible to the tensor cores' proxy
            kv = kv_smem.index(b)
            s = warpgroup_mma(q_smem, kv.permute((1, 0)), gl.zeros([BH, BLOCK_K], gl.float32, s_layout),
                              use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=[s])
            s = gl.where((cur >= 0)[None, :], s * qk_scale, float("-inf"))
            m_new = gl.maximum(m, gl.max(s, axis=1))
            alpha = gl.exp2(m - m_new)
            p = gl.exp2(s - m_new[:, None])
            l_sum = l_sum * alpha + gl.sum(p, axis=1)
            m = m_new
            p_smem.store(p.to(dt))
            fence_async_shared()
            gl.thread_barrier()  # both warpgroups' P
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
            acc = warpgroup_mma(p_smem, kv, acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[acc])
            mbarrier.arrive(empty.index(b))  # after both warpgroups: the buffer and P are free again

        _store_output(m, l_sum, acc, out_ptr, sink_ptr, part_o_ptr, part_lse_ptr, t, hb, split, H, o_stride_t,
                      o_stride_h, BH, D, NUM_SPLITS)

    @gluon.jit
    def _sparse_attn_sm90_kernel(q_ptr, out_ptr, sink_ptr, part_o_ptr, part_lse_ptr,
                                 src0_ptr, idx0_ptr, k0_len, idx0_stride, row0_stride,
                                 src1_ptr, idx1_ptr, k1_len, idx1_stride, row1_stride,
                                 H, q_stride_t, q_stride_h, o_stride_t, o_stride_h, split_len, qk_scale,
                                 D: gl.constexpr, BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr,
                                 NUM_SPLITS: gl.constexpr, LOAD_WARPS: gl.constexpr, LOAD_REGS: gl.constexpr,
                                 num_warps: gl.constexpr):
        BH: gl.constexpr = 64
        dt: gl.constexpr = q_ptr.dtype.element_ty
        t = gl.program_id(0).to(gl.int64)
        hb = gl.program_id(1)
        split = gl.program_id(2)
        q_smem = gl.allocate_shared_memory(dt, [BH, D], gl.NVMMASharedLayout.get_default_for([BH, D], dt))
        kv_smem = gl.allocate_shared_memory(dt, [NUM_BUF, BLOCK_K, D],
                                            gl.NVMMASharedLayout.get_default_for([BLOCK_K, D], dt))
        p_smem = gl.allocate_shared_memory(dt, [BH, BLOCK_K], gl.NVMMASharedLayout.get_default_for([BH, BLOCK_K], dt))
        full = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NUM_BUF):
            mbarrier.init(full.index(i), count=LOAD_WARPS * 32)  # one no-increment arrival per loading thread
            mbarrier.init(empty.index(i), count=1)  # the consumer partition arrives once

        # q into shared memory before the partitions fork
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [num_warps, 1], [1, 0])
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
        heads = hb * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, ld))
        q_rows = q_ptr + t * q_stride_t + heads.to(gl.int64)[:, None] * q_stride_h
        cp.async_copy_global_to_shared(q_smem, q_rows + cols[None, :], mask=(heads < H)[:, None])
        cp.commit_group()
        cp.wait_group(0)
        fence_async_shared()
        gl.thread_barrier()

        idx0 = idx0_ptr + t * idx0_stride
        idx1 = idx1_ptr + t * idx1_stride
        lo = split * split_len
        hi = gl.minimum(lo + split_len, k0_len + k1_len)
        n_tiles = gl.cdiv(hi - lo, BLOCK_K)
        gl.warp_specialize([
            (_attend, (q_smem, kv_smem, p_smem, full, empty, idx0, idx1, k0_len, lo, hi, n_tiles, qk_scale,
                       out_ptr, sink_ptr, part_o_ptr, part_lse_ptr, t, hb, split, H, o_stride_t, o_stride_h,
                       BH, D, BLOCK_K, NUM_BUF, NUM_SPLITS)),
            (_load_rows, (src0_ptr, idx0, src1_ptr, idx1, k0_len, row0_stride, row1_stride, lo, hi, n_tiles,
                          kv_smem, full, empty, BLOCK_K, D, NUM_BUF)),
        ], [LOAD_WARPS], [LOAD_REGS])


@functools.lru_cache(maxsize=None)
def device_unsupported_reason(device: torch.device) -> str | None:
    """Why this kernel cannot run on `device` (None if it can): Gluon and a Hopper GPU (wgmma). A fact of
    the device: asked once, not per call."""
    if not HAS_GLUON:
        return "needs triton.experimental.gluon (Triton >= 3.5)"
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return "needs a Hopper GPU (SM 9.x): wgmma"
    return None


def unsupported_reason(q: torch.Tensor, sources) -> str | None:
    """Why this kernel cannot take the call (None if it can): the device's reason, else bf16/fp16 q of 512
    channels over plain rows (fp8_ds_mla pages take the portable kernel)."""
    reason = device_unsupported_reason(q.device)
    if reason is not None:
        return reason
    if q.dtype not in (torch.bfloat16, torch.float16) or q.shape[2] != 512:
        return "takes bf16/fp16 q with a 512-channel latent"
    if not 1 <= len(sources) <= 2:
        return "takes one or two sources"
    for src, _ in sources:
        rows = src if isinstance(src, torch.Tensor) else (src.data if src.layout is None else None)
        if rows is None or rows.dtype != q.dtype:
            return "takes plain latent rows in q's dtype (fp8_ds_mla pages take the portable kernel)"
    return None


def takes(q: torch.Tensor, sources) -> bool:
    """Whether the Hopper kernel should serve this call: it can, and the call is big enough."""
    rows = sum(i.shape[1] for _, i in sources)
    return unsupported_reason(q, sources) is None and big_enough(q.shape[0] * triton.cdiv(q.shape[1], BLOCK_H), rows)


def big_enough(programs: int, rows: int) -> bool:
    """At least MIN_WORK (query, 64-head block) x list rows. Below, the portable kernel's narrower programs
    win: a 64-head program's list is one dependent chain. H200, V4-Flash, us portable / sm90
    (h200_sparse_attn_sm90_small.json): CSA (640 rows) 1 request 8.0 / 11.7, 8: 15.1 / 14.1, 16: 24.6 / 16.1;
    HCA 4K (160 rows) 16 requests 12.0 / 15.7, 128: 21.9 / 20.4."""
    return programs * rows >= MIN_WORK


def sparse_attn_sm90(q: torch.Tensor, sources, sink: torch.Tensor, scale: float, *, block_k: int | None = None,
                     num_buf: int | None = None, num_splits: int | None = None) -> torch.Tensor:
    """sparse_attn_ref's contract on Hopper (see `unsupported_reason` for what it takes). Row tiles of block_k
    rows in a ring of num_buf (default BLOCK_K, NUM_BUF); splits of the lists as the portable kernel's."""
    reason = unsupported_reason(q, sources)
    assert reason is None, f"sparse_attn_sm90 {reason}"
    assert q.stride(2) == 1, "q must be [T, H, D] with unit stride on D"
    t, h, d = q.shape
    block_k = BLOCK_K if block_k is None else block_k
    num_buf = NUM_BUF if num_buf is None else num_buf
    assert block_k in (32, 64) and num_buf >= 2, "block_k 32 or 64, at least 2 buffers"
    out = torch.empty_like(q)
    if t == 0:
        return out
    args = [portable._source(s, i) for s, i in sources]
    a1 = args[1] if len(args) == 2 else args[0]._replace(num_indices=0)
    total = args[0].num_indices + a1.num_indices
    head_blocks = triton.cdiv(h, BLOCK_H)
    num_splits, split_len, part_o, part_lse = plan_splits(q, out, total, t * head_blocks, block_k, d, num_splits)
    _sparse_attn_sm90_kernel[(t, head_blocks, num_splits)](
        q, out, sink, part_o, part_lse,
        args[0].storage, args[0].indices, args[0].num_indices, args[0].index_stride, args[0].row_stride,
        a1.storage, a1.indices, a1.num_indices, a1.index_stride, a1.row_stride,
        h, q.stride(0), q.stride(1), out.stride(0), out.stride(1), split_len, scale * LOG2E,
        D=d, BLOCK_K=block_k, NUM_BUF=num_buf, NUM_SPLITS=num_splits, LOAD_WARPS=LOAD_WARPS,
        LOAD_REGS=LOAD_REGS[block_k], num_warps=NUM_WARPS)
    if num_splits > 1:
        merge_splits(part_o, part_lse, sink, out, num_splits)
    return out

