"""Sparse MLA decode for Hopper (SM 9.x) in Gluon: the portable kernel's contract, an explicit pipeline.

The portable Triton kernel (`sparse_attn.py`) leaves two things to the compiler that it cannot do
for gathered rows: its pipeliner waits for every row copy at the top of each step (the copies'
addresses come from an index read in the same step), and a dot feeding another dot gets all 8
warps along the 64 heads, so both warpgroups compute the same scores. Gluon states both:

- a ring of NUM_BUF row tiles in shared memory, filled by cp.async NUM_BUF - 1 tiles ahead, their
  slots read one more tile ahead into registers, so neither the index read nor the copies wait;
- QK on the tensor cores (wgmma) with the two warpgroups on different rows of the tile
  (`[4, 2]` warps), P through shared memory, PV with each warpgroup on half the 512 channels.

Plain (bf16/fp16) latent rows, all the heads of a query in blocks of 64 (a wgmma's M), two
sources (window rows, compressed entries) as one list. The sink, the -1 skips, the splits of the
list and their merge are the portable kernel's (its merge kernel is reused).
"""

from __future__ import annotations

import torch

from vllm.kernels import sparse_attn as portable
from vllm.kernels._triton import HAS_TRITON, next_pow2, triton

try:  # Gluon ships with Triton >= 3.5; without it the portable kernel serves Hopper too
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

    HAS_GLUON = HAS_TRITON
except ImportError:  # pragma: no cover - depends on the Triton version
    HAS_GLUON = False

BLOCK_H = 64  # heads a program: one wgmma M per warpgroup
NUM_WARPS = 8  # two warpgroups
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
        ptr = gl.where(in0[:, None], src0_ptr + off0[:, None] + cols[None, :], src1_ptr + off1[:, None] + cols[None, :])
        cp.async_copy_global_to_shared(dst, ptr, mask=valid[:, None])

    @gluon.jit
    def _sparse_attn_sm90_kernel(q_ptr, out_ptr, sink_ptr, part_o_ptr, part_lse_ptr,
                                 src0_ptr, idx0_ptr, k0_len, idx0_stride, row0_stride,
                                 src1_ptr, idx1_ptr, k1_len, idx1_stride, row1_stride,
                                 H, q_stride_t, q_stride_h, o_stride_t, o_stride_h, split_len, qk_scale,
                                 D: gl.constexpr, BLOCK_K: gl.constexpr, NUM_BUF: gl.constexpr,
                                 NUM_SPLITS: gl.constexpr, num_warps: gl.constexpr):
        BH: gl.constexpr = 64
        dt: gl.constexpr = q_ptr.dtype.element_ty
        t = gl.program_id(0).to(gl.int64)
        hb = gl.program_id(1)
        split = gl.program_id(2)

        # registers: 16-byte copies along a row; wgmma accumulators with the warpgroups side by side
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [num_warps, 1], [1, 0])
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                           instr_shape=[16, BLOCK_K // 2, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                           instr_shape=[16, D // 2, 16])
        q_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BH, D], dt)
        kv_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_K, D], dt)
        p_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BH, BLOCK_K], dt)
        q_smem = gl.allocate_shared_memory(dt, [BH, D], q_sl)
        kv_smem = gl.allocate_shared_memory(dt, [NUM_BUF, BLOCK_K, D], kv_sl)
        p_smem = gl.allocate_shared_memory(dt, [BH, BLOCK_K], p_sl)

        cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
        heads_ld = hb * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, ld))
        q_rows = q_ptr + t * q_stride_t + heads_ld.to(gl.int64)[:, None] * q_stride_h
        cp.async_copy_global_to_shared(q_smem, q_rows + cols[None, :], mask=(heads_ld < H)[:, None])

        idx0 = idx0_ptr + t * idx0_stride
        idx1 = idx1_ptr + t * idx1_stride
        lo = split * split_len
        hi = gl.minimum(lo + split_len, k0_len + k1_len)
        n_tiles = gl.cdiv(hi - lo, BLOCK_K)
        krow_ld = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, ld))
        kcol_s = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, s_layout))

        # prologue: tiles 0 .. NUM_BUF-2 in flight (q rides in the first group); the next tile's slots read
        nxt, nxt0 = _tile_slots(idx0, idx1, k0_len, lo + krow_ld, hi)
        for b in gl.static_range(NUM_BUF - 1):
            _issue_rows(kv_smem.index(b), src0_ptr, src1_ptr, row0_stride, row1_stride, nxt, nxt0, cols)
            cp.commit_group()
            nxt, nxt0 = _tile_slots(idx0, idx1, k0_len, lo + (b + 1) * BLOCK_K + krow_ld, hi)

        m = gl.full([BH], -1e30, gl.float32, layout=gl.SliceLayout(1, s_layout))  # finite: alpha stays 0/1
        l_sum = gl.zeros([BH], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([BH, D], gl.float32, layout=o_layout)
        for j in range(n_tiles):
            gl.thread_barrier()  # every warp is done with tile j-1, whose buffer is refilled now
            _issue_rows(kv_smem.index((j + NUM_BUF - 1) % NUM_BUF), src0_ptr, src1_ptr, row0_stride, row1_stride,
                        nxt, nxt0, cols)
            cp.commit_group()
            nxt, nxt0 = _tile_slots(idx0, idx1, k0_len, lo + (j + NUM_BUF) * BLOCK_K + krow_ld, hi)
            cur, _ = _tile_slots(idx0, idx1, k0_len, lo + j * BLOCK_K + kcol_s, hi)  # cached: read a step ago
            cp.wait_group(NUM_BUF - 1)  # tile j has landed (this thread's copies) ...
            fence_async_shared()  # ... is visible to the tensor cores' proxy ...
            gl.thread_barrier()  # ... for every thread's copies
            kv = kv_smem.index(j % NUM_BUF)
            s = warpgroup_mma(q_smem, kv.permute((1, 0)), gl.zeros([BH, BLOCK_K], gl.float32, s_layout),
                              use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=[s])
            s = gl.where((cur >= 0)[None, :], s * qk_scale, float("-inf"))  # log2 units
            m_new = gl.maximum(m, gl.max(s, axis=1))
            alpha = gl.exp2(m - m_new)
            p = gl.exp2(s - m_new[:, None])
            l_sum = l_sum * alpha + gl.sum(p, axis=1)
            m = m_new
            p_smem.store(p.to(dt))
            fence_async_shared()
            gl.thread_barrier()
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
            acc = warpgroup_mma(p_smem, kv, acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[acc])
        cp.wait_group(0)

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


def unsupported_reason(q: torch.Tensor, sources) -> str | None:
    """Why this kernel cannot take the call (None if it can): Gluon, a Hopper GPU, bf16/fp16 q of 512
    channels over plain rows (fp8_ds_mla pages take the portable kernel)."""
    if not HAS_GLUON:
        return "needs triton.experimental.gluon (Triton >= 3.5)"
    if not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] != 9:
        return "needs a Hopper GPU (SM 9.x): wgmma"
    if q.dtype not in (torch.bfloat16, torch.float16) or q.shape[2] != 512:
        return "takes bf16/fp16 q with a 512-channel latent"
    if not 1 <= len(sources) <= 2:
        return "takes one or two sources"
    for src, _ in sources:
        rows = src if isinstance(src, torch.Tensor) else (src.data if src.layout is None else None)
        if rows is None or rows.dtype != q.dtype:
            return "takes plain latent rows in q's dtype (fp8_ds_mla pages take the portable kernel)"
    return None


def sparse_attn_sm90(q: torch.Tensor, sources, sink: torch.Tensor, scale: float, *, block_k: int = 64,
                     num_buf: int = 2, num_splits: int | None = None) -> torch.Tensor:
    """sparse_attn_ref's contract on Hopper (see `unsupported_reason` for what it takes)."""
    reason = unsupported_reason(q, sources)
    assert reason is None, f"sparse_attn_sm90 {reason}"
    assert q.stride(2) == 1, "q must be [T, H, D] with unit stride on D"
    assert block_k in (32, 64) and num_buf >= 2, "block_k 32 or 64, at least 2 buffers"
    t, h, d = q.shape
    out = torch.empty_like(q)
    if t == 0:
        return out
    args = [portable._source(s, i) for s, i in sources]
    a1 = args[1] if len(args) == 2 else args[0]._replace(num_indices=0)
    total = args[0].num_indices + a1.num_indices
    head_blocks = triton.cdiv(h, BLOCK_H)
    if num_splits is None:
        num_splits = portable.pick_splits(t * head_blocks, total, block_k,
                                          torch.cuda.get_device_properties(q.device).multi_processor_count)
    split_len = triton.cdiv(triton.cdiv(max(total, 1), num_splits), block_k) * block_k
    num_splits = triton.cdiv(max(total, 1), split_len)
    if num_splits > 1:
        part_o = torch.empty(t * num_splits * h, d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(t * num_splits * h, dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out  # unused
    _sparse_attn_sm90_kernel[(t, head_blocks, num_splits)](
        q, out, sink, part_o, part_lse,
        args[0].storage, args[0].indices, args[0].num_indices, args[0].index_stride, args[0].row_stride,
        a1.storage, a1.indices, a1.num_indices, a1.index_stride, a1.row_stride,
        h, q.stride(0), q.stride(1), out.stride(0), out.stride(1), split_len, scale * LOG2E,
        D=d, BLOCK_K=block_k, NUM_BUF=num_buf, NUM_SPLITS=num_splits, num_warps=NUM_WARPS)
    if num_splits > 1:
        portable._merge_splits_kernel[(t, h)](part_o, part_lse, sink, out, h, out.stride(0), out.stride(1), D=d,
                                              BLOCK_D=d, NUM_SPLITS=num_splits, BLOCK_S=next_pow2(num_splits),
                                              num_warps=4)
    return out

