"""The math side of the Hopper sparse MLA kernels (Gluon, SM 9.x), shared by both row formats.

Each kernel (`sparse_attn_sm90` for plain rows, `sparse_attn_sm90_fp8` for fp8_ds_mla pages) has load
warps of its own that fill a ring of NUM_BUF shared-memory tiles of bf16/fp16 rows `[BLOCK_K, 512]`,
completing a tile's `full` mbarrier when it is ready for the tensor cores. What they share lives here:

- `_tile_slots`: the slots of a tile's list positions across the two sources (window rows, compressed
  entries) read as one list;
- `_math_buffers`, `_program_list`, `_load_q`: the shared memory the math warpgroups read, the program's
  part of its list, and its 64 heads of q in shared memory before the partitions fork;
- `_attend`: two math warpgroups. QK on wgmma with the warpgroups on different rows of the tile
  (`[4, 2]` warps), online softmax in log2 units, P through shared memory, PV with each warpgroup on
  half the 512 channels (a [64, 512] fp32 accumulator is 128 registers a thread); it arrives on the
  tile's `empty` mbarrier when both warpgroups are done with it;
- `_store_output`: the output with the sink in the denominator (one split), or the split's output and
  LSE for `attn_splits.merge_splits`;
- on the host, `plan_launch` / `finish_launch`: the output, the sources as the kernels take them, the
  grid and the splits of the lists, and their merge.
"""

from __future__ import annotations

from typing import NamedTuple

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
LOAD_WARPS = 4  # fewer spill their row addresses
LOG2E = 1.4426950408889634


class LaunchPlan(NamedTuple):
    out: torch.Tensor
    src0: portable._Source
    src1: portable._Source  # the first source with no indices when there is one
    grid: tuple[int, int, int]  # (query, 64-head block, split of the list)
    num_splits: int
    split_len: int
    part_o: torch.Tensor
    part_lse: torch.Tensor


def plan_launch(q: torch.Tensor, sources, block_k: int, num_splits: int | None) -> LaunchPlan:
    """What both Hopper launchers set up the same way: the output, the sources, the grid, the list's splits."""
    t, h, d = q.shape
    out = torch.empty_like(q)
    args = [portable._source(s, i) for s, i in sources]
    src1 = args[1] if len(args) == 2 else args[0]._replace(num_indices=0)
    head_blocks = triton.cdiv(h, BLOCK_H)
    num_splits, split_len, part_o, part_lse = plan_splits(q, out, args[0].num_indices + src1.num_indices,
                                                          t * head_blocks, block_k, d, num_splits)
    return LaunchPlan(out, args[0], src1, (t, head_blocks, num_splits), num_splits, split_len, part_o, part_lse)


def finish_launch(plan: LaunchPlan, sink: torch.Tensor) -> torch.Tensor:
    """The output, its splits merged (with the sink) when there were several."""
    if plan.num_splits > 1:
        merge_splits(plan.part_o, plan.part_lse, sink, plan.out, plan.num_splits)
    return plan.out

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
    def _math_buffers(dt: gl.constexpr, BH: gl.constexpr, D: gl.constexpr, BLOCK_K: gl.constexpr,
                      NUM_BUF: gl.constexpr):
        """Shared memory the math warpgroups read: q `[BH, D]`, the ring of NUM_BUF row tiles `[BLOCK_K, D]`
        and P `[BH, BLOCK_K]` (wgmma's swizzled layouts); `full` and `empty` barriers, one per ring tile
        (the kernel initializes them: who arrives on `full` depends on its load warps)."""
        q_smem = gl.allocate_shared_memory(dt, [BH, D], gl.NVMMASharedLayout.get_default_for([BH, D], dt))
        kv_smem = gl.allocate_shared_memory(dt, [NUM_BUF, BLOCK_K, D],
                                            gl.NVMMASharedLayout.get_default_for([BLOCK_K, D], dt))
        p_smem = gl.allocate_shared_memory(dt, [BH, BLOCK_K], gl.NVMMASharedLayout.get_default_for([BH, BLOCK_K], dt))
        full = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        return q_smem, kv_smem, p_smem, full, empty

    @gluon.jit
    def _program_list(idx0_ptr, idx1_ptr, t, idx0_stride, idx1_stride, k0_len, k1_len, split, split_len,
                      BLOCK_K: gl.constexpr):
        """Token t's index rows, and this split's part [lo, hi) of its list in tiles of BLOCK_K."""
        lo = split * split_len
        hi = gl.minimum(lo + split_len, k0_len + k1_len)
        return idx0_ptr + t * idx0_stride, idx1_ptr + t * idx1_stride, lo, hi, gl.cdiv(hi - lo, BLOCK_K)

    @gluon.jit
    def _load_q(q_ptr, q_smem, t, hb, H, q_stride_t, q_stride_h, BH: gl.constexpr, D: gl.constexpr):
        """q's heads [hb * BH, hb * BH + BH) of token t into shared memory (zeros past H), visible to wgmma."""
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
        heads = hb * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, ld))
        q_rows = q_ptr + t * q_stride_t + heads.to(gl.int64)[:, None] * q_stride_h
        cp.async_copy_global_to_shared(q_smem, q_rows + cols[None, :], mask=(heads < H)[:, None])
        cp.commit_group()
        cp.wait_group(0)
        fence_async_shared()
        gl.thread_barrier()

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
