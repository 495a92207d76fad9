"""The math side of the Hopper sparse MLA kernels (Gluon, SM 9.x), shared by both row formats.

Each kernel (`sparse_attn_sm90` for plain rows, `sparse_attn_sm90_fp8` for fp8_ds_mla pages) has load
warps of its own that fill a ring of NUM_BUF shared-memory tiles of bf16/fp16 rows `[BLOCK_K, 512]`,
completing a tile's `full` mbarrier when it is ready for the tensor cores. What they share lives here:

- `_slot_loads` / `_tile_slots`: the slots of a tile's list positions across the two sources (window
  rows, compressed entries) read as one list;
- `_program_list`, `_issue_q` / `_wait_q`: the program's part of its list, and its 64 heads of q in
  shared memory (copies issued before the partitions fork, awaited by the math partition);
- the math warpgroups, each on half the 512 channels of the output (a [64, 256] fp32 accumulator is 128
  registers a thread), in partitions of their own (buffers from `_scorer_buffers`). The scorer (the
  default partition) computes a tile's whole S = q K^T (q read from shared memory once a tile), the
  online softmax, hands P and the row rescale to the helper through one of two P slots, and runs its PV
  with P from registers; the helper runs the other PV while the scorer's next QK starts. Each arrives on
  the tile's `empty` mbarrier when done with it. H200, V4-Flash CSA 32K, 128 requests
  (`h200_sparse_attn_sm90_split.json`): plain rows 41.3 -> 37.8 us against one partition of both
  warpgroups with QK split by rows (`[4, 2]` warps, q read twice a tile, P through shared memory); fp8
  pages 75.2 -> 40.9 us, their load warps' per-tile instructions cut, the tiles staged in the ring and part
  of each copied a tile early (`h200_sparse_attn_sm90_fp8_side.json`);
- `_store_half`: channels of the output with the sink in the denominator (one split), or of the
  split's output, and its LSE, for `attn_splits.merge_splits`;
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
SCORER_WARPS = 4  # `_score`: the launch's warps when the helper and the load warps come on top
HELPER_WARPS, HELPER_REGS = 4, 160  # `_help`: a [64, 256] fp32 accumulator and little else
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

    def kernel_args(self, q: torch.Tensor, sink: torch.Tensor, scale: float, rows_by) -> tuple:
        """The positional arguments both Hopper kernels take, in their order; `rows_by(source)`: how that kernel
        finds a source's rows (a row stride, or a page's bytes)."""
        a0, a1 = self.src0, self.src1
        return (q, self.out, sink, self.part_o, self.part_lse,
                a0.storage, a0.indices, a0.num_indices, a0.index_stride, rows_by(a0),
                a1.storage, a1.indices, a1.num_indices, a1.index_stride, rows_by(a1),
                q.shape[1], q.stride(0), q.stride(1), self.out.stride(0), self.out.stride(1), self.split_len,
                scale * LOG2E)


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
    _HELPER_WARPS, _HELPER_REGS = gl.constexpr(HELPER_WARPS), gl.constexpr(HELPER_REGS)  # as the kernels see them

    @gluon.jit
    def _slot_loads(idx0_ptr, idx1_ptr, k0_len, pos, hi):
        """The loads of list positions `pos` of [src0 indices | src1 indices] (-1 past hi and in the other
        source's), and which source each is in: `_tile_slots` without waiting for the loads."""
        in0 = pos < k0_len
        live = pos < hi
        s0 = gl.load(idx0_ptr + pos, mask=live & in0, other=-1).to(gl.int32)
        s1 = gl.load(idx1_ptr + (pos - k0_len), mask=live & (pos >= k0_len), other=-1).to(gl.int32)
        return s0, s1, in0

    @gluon.jit
    def _tile_slots(idx0_ptr, idx1_ptr, k0_len, pos, hi):
        """Slots of list positions `pos` of [src0 indices | src1 indices] (-1 past hi); the source of each."""
        s0, s1, in0 = _slot_loads(idx0_ptr, idx1_ptr, k0_len, pos, hi)
        return gl.where(in0, s0, s1), in0

    @gluon.jit
    def _scorer_buffers(dt: gl.constexpr, BH: gl.constexpr, D: gl.constexpr, BLOCK_K: gl.constexpr,
                        NUM_BUF: gl.constexpr):
        """Shared memory `_score` and `_help` read: q and the ring (wgmma's swizzled layouts), two P slots
        `[BH, BLOCK_K]` with their row rescales, the final (max, sum) rows; the ring's barriers, `ready` and
        `free` per P slot, `done` for the final rows. All initialized here but `full` (who arrives on it
        depends on the kernel's load warps)."""
        q_smem = gl.allocate_shared_memory(dt, [BH, D], gl.NVMMASharedLayout.get_default_for([BH, D], dt))
        kv_smem = gl.allocate_shared_memory(dt, [NUM_BUF, BLOCK_K, D],
                                            gl.NVMMASharedLayout.get_default_for([BLOCK_K, D], dt))
        p_smem = gl.allocate_shared_memory(dt, [2, BH, BLOCK_K],
                                           gl.NVMMASharedLayout.get_default_for([BH, BLOCK_K], dt))
        rows_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
        alpha_smem = gl.allocate_shared_memory(gl.float32, [2, BH], rows_layout)
        final_smem = gl.allocate_shared_memory(gl.float32, [2, BH], rows_layout)
        full = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        done = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NUM_BUF):
            mbarrier.init(empty.index(i), count=2)  # the scorer and the helper each arrive once
        for i in gl.static_range(2):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(free.index(i), count=1)
        mbarrier.init(done.index(0), count=1)
        return q_smem, kv_smem, p_smem, alpha_smem, final_smem, full, empty, ready, free, done

    @gluon.jit
    def _program_list(idx0_ptr, idx1_ptr, t, idx0_stride, idx1_stride, k0_len, k1_len, split, split_len,
                      BLOCK_K: gl.constexpr):
        """Token t's index rows, and this split's part [lo, hi) of its list in tiles of BLOCK_K."""
        lo = split * split_len
        hi = gl.minimum(lo + split_len, k0_len + k1_len)
        return idx0_ptr + t * idx0_stride, idx1_ptr + t * idx1_stride, lo, hi, gl.cdiv(hi - lo, BLOCK_K)

    @gluon.jit
    def _issue_q(q_ptr, q_smem, t, hb, H, q_stride_t, q_stride_h, BH: gl.constexpr, D: gl.constexpr):
        """Start copying q's heads [hb * BH, hb * BH + BH) of token t into shared memory (zeros past H). Issued
        before the partitions fork, so the load warps' first tiles are in flight while q lands; the math
        partition (the same warps) waits for it with `_wait_q`."""
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
        cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
        heads = hb * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, ld))
        q_rows = q_ptr + t * q_stride_t + heads.to(gl.int64)[:, None] * q_stride_h
        cp.async_copy_global_to_shared(q_smem, q_rows + cols[None, :], mask=(heads < H)[:, None])
        cp.commit_group()

    @gluon.jit
    def _wait_q():
        """q (`_issue_q`, by these warps) landed, visible to wgmma."""
        cp.wait_group(0)
        fence_async_shared()
        gl.thread_barrier()

    @gluon.jit
    def _store_half(m, l_sum, acc, col0, dest, BH: gl.constexpr, D: gl.constexpr, NUM_SPLITS: gl.constexpr,
                    STORE_LSE: gl.constexpr):
        """Channels [col0, col0 + W) of the output (acc `[BH, W]`): normalized with the sink in the denominator
        (one split), or this split's normalized output, and (STORE_LSE) its natural-log LSE, -inf when it saw
        no valid row. `dest`: where the program's output goes (the kernels' `dest` tuple)."""
        out_ptr, sink_ptr, part_o_ptr, part_lse_ptr, t, hb, split, H, o_stride_t, o_stride_h = dest
        o_layout: gl.constexpr = acc.type.layout
        W: gl.constexpr = acc.type.shape[1]
        dt: gl.constexpr = out_ptr.dtype.element_ty
        heads = hb * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, o_layout))
        hmask = heads < H
        ocols = col0 + gl.arange(0, W, layout=gl.SliceLayout(0, o_layout))
        m_o = gl.convert_layout(m, gl.SliceLayout(1, o_layout))
        l_o = gl.convert_layout(l_sum, gl.SliceLayout(1, o_layout))
        if NUM_SPLITS == 1:
            sink = gl.load(sink_ptr + heads, mask=hmask, other=0.0) * 1.4426950408889634
            mf = gl.maximum(m_o, sink)
            w = gl.exp2(m_o - mf)
            norm = w / (l_o * w + gl.exp2(sink - mf))
            o_rows = out_ptr + t * o_stride_t + heads.to(gl.int64)[:, None] * o_stride_h
            gl.store(o_rows + ocols[None, :], (acc * norm[:, None]).to(dt), mask=hmask[:, None])
        else:
            row = (t * NUM_SPLITS + split) * H + heads
            den = gl.maximum(l_o, 1e-30)
            gl.store(part_o_ptr + row.to(gl.int64)[:, None] * D + ocols[None, :], acc / den[:, None],
                     mask=hmask[:, None])
            if STORE_LSE:
                lse = gl.where(l_o > 0, (m_o + gl.log2(gl.maximum(l_o, 1e-30))) * 0.6931471805599453,
                               float("-inf"))
                gl.store(part_lse_ptr + row, lse, mask=hmask)

    @gluon.jit
    def _tile_scores(q_smem, kv_smem, full, j, cur, m, l_sum, qk_scale, s_layout: gl.constexpr, BH: gl.constexpr,
                     BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr):
        """Tile j of the ring once it is full: S = q K^T (`s_layout`'s warps), -inf where the slot is -1, and
        the online softmax step in log2 units: (the tile, P in fp32, the rows' rescale, new max, new sum)."""
        b = j % NUM_BUF
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
        return kv, p, alpha, m_new, l_sum * alpha + gl.sum(p, axis=1)

    @gluon.jit
    def _score(bufs, idx0, idx1, k0_len, lo, hi, n_tiles, qk_scale, dest, BH: gl.constexpr, D: gl.constexpr,
               BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr, NUM_SPLITS: gl.constexpr):
        """The scoring warpgroup (the default partition): per tile S = q K^T over the whole tile (q read once a
        tile), online softmax in log2 units, P and the row rescale handed to the helper through a P slot, and
        acc += P V over the left half of the channels with P from registers; then the final (max, sum) rows for
        the helper, and its half of the output. `bufs`: `_scorer_buffers`; `dest`: `_store_half`'s."""
        q_smem, kv_smem, p_smem, alpha_smem, final_smem, full, empty, ready, free, done = bufs
        dt: gl.constexpr = q_smem.dtype
        W: gl.constexpr = D // 2
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_K, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, W, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        kcol = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, s_layout))
        m = gl.full([BH], -1e30, gl.float32, layout=gl.SliceLayout(1, s_layout))  # finite: alpha stays 0/1
        l_sum = gl.zeros([BH], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([BH, W], gl.float32, layout=o_layout)
        nxt, _ = _tile_slots(idx0, idx1, k0_len, lo + kcol, hi)
        _wait_q()
        for j in range(n_tiles):
            b = j % NUM_BUF
            ps = j % 2
            cur = nxt
            nxt, _ = _tile_slots(idx0, idx1, k0_len, lo + (j + 1) * BLOCK_K + kcol, hi)  # a tile ahead
            kv, p, alpha, m, l_sum = _tile_scores(q_smem, kv_smem, full, j, cur, m, l_sum, qk_scale, s_layout, BH,
                                                  BLOCK_K, NUM_BUF)
            p = p.to(dt)
            mbarrier.wait(free.index(ps), ((j // 2) & 1) ^ 1)  # the helper is done with tile j - 2's P
            p_smem.index(ps).store(p)
            alpha_smem.index(ps).store(alpha)
            fence_async_shared()
            mbarrier.arrive(ready.index(ps))
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
            acc = warpgroup_mma(gl.convert_layout(p, p_layout), kv.slice(0, W, dim=1), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[acc])
            mbarrier.arrive(empty.index(b))
        final_smem.index(0).store(m)
        final_smem.index(1).store(l_sum)
        mbarrier.arrive(done.index(0))
        _store_half(m, l_sum, acc, 0, dest, BH, D, NUM_SPLITS, True)

    @gluon.jit
    def _help(bufs, n_tiles, dest, BH: gl.constexpr, D: gl.constexpr, BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr,
              NUM_SPLITS: gl.constexpr):
        """The helper warpgroup: per tile, the scorer's rescale and acc += P V over the right half of the
        channels with P from its slot; then its half of the output with the scorer's final rows."""
        _, kv_smem, p_smem, alpha_smem, final_smem, full, empty, ready, free, done = bufs
        W: gl.constexpr = D // 2
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, W, 16])
        rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        acc = gl.zeros([BH, W], gl.float32, layout=o_layout)
        for j in range(n_tiles):
            b = j % NUM_BUF
            ps = j % 2
            mbarrier.wait(full.index(b), (j // NUM_BUF) & 1)  # done by the time P is ready; orders the copies here
            mbarrier.wait(ready.index(ps), (j // 2) & 1)
            fence_async_shared()
            acc = acc * alpha_smem.index(ps).load(rows)[:, None]
            acc = warpgroup_mma(p_smem.index(ps), kv_smem.index(b).slice(W, W, dim=1), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[acc])
            mbarrier.arrive(free.index(ps))
            mbarrier.arrive(empty.index(b))
        mbarrier.wait(done.index(0), 0)
        _store_half(final_smem.index(0).load(rows), final_smem.index(1).load(rows), acc, W, dest, BH, D, NUM_SPLITS,
                    False)
