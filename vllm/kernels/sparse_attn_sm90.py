"""Sparse MLA decode for Hopper (SM 9.x) in Gluon: the portable kernel's contract, explicit warp roles.

The portable Triton kernel (`sparse_attn.py`) leaves two things to the compiler that it cannot do
for gathered rows: its pipeliner waits for every row copy at the top of each step (the copies'
addresses come from an index read in the same step), and a dot feeding another dot gets all 8
warps along the 64 heads, so both warpgroups compute the same scores. Gluon states both:

- load warps (a warp-specialized partition with few registers) read each tile's slots and fill a
  ring of NUM_BUF shared-memory tiles; an mbarrier per tile says "ready" and one says "consumed";
- two math warpgroups (a scorer and a helper, partitions of their own) run QK and PV on wgmma
  (`sparse_attn_sm90_attend.py`, shared by both formats).

This module is the entry point: what the kernels take (`unsupported_reason`, `takes`), and the
plain-row kernel, whose load warps cp.async bf16/fp16 rows straight into the ring (the copies' own
arrival completes "ready"). fp8_ds_mla pages go to `sparse_attn_sm90_fp8.py`, on the same ring,
whose load warps stage each tile's bytes in its ring tile and dequantize them there. All the heads of
a query in blocks of 64 (a wgmma's M), two sources (window rows, compressed entries) as one list. The
sink, the -1 skips, the splits of the list and their merge are the portable kernel's (`attn_splits.py`).
Small batches take the portable kernel (`takes`).
"""

from __future__ import annotations

import functools

import torch

from vllm.kernels import sparse_attn_sm90_fp8 as fp8_pages
from vllm.kernels._triton import triton
from vllm.kernels.sparse_attn_sm90_attend import (BLOCK_H, HAS_GLUON, LOAD_WARPS, SCORER_WARPS, finish_launch,
                                                  plan_launch)

MIN_WORK = 8 * 640  # (query, head block) programs x rows a query: see big_enough
# 64-row tiles in two buffers at every batch: against 32-row tiles four deep, H200, V4-Flash CSA 32K,
# 32 / 64 / 128 requests: 20.3 / 29.1 / 37.9 us vs 21.4 / 30.6 / 42.2 (h200_sparse_attn_sm90_split_trials.json)
BLOCK_K, NUM_BUF = 64, 2
# registers a load thread per tile height: none spilled, and with the scorer's 256 and the helper's HELPER_REGS
# within the SM's 64K (compile-only check: tests/kernels/test_sparse_attn_sm90.py)
LOAD_REGS = {64: 56, 32: 64}

if HAS_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier

    from vllm.kernels.sparse_attn_sm90_attend import (_HELPER_REGS, _HELPER_WARPS, _help, _issue_q, _program_list,
                                                      _score, _scorer_buffers, _tile_slots)

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
        bufs = _scorer_buffers(dt, BH, D, BLOCK_K, NUM_BUF)
        q_smem, kv_smem, full, empty = bufs[0], bufs[1], bufs[5], bufs[6]  # what this partition and the loaders use
        for i in gl.static_range(NUM_BUF):
            mbarrier.init(full.index(i), count=LOAD_WARPS * 32)  # one no-increment arrival per loading thread

        _issue_q(q_ptr, q_smem, t, hb, H, q_stride_t, q_stride_h, BH, D)

        idx0, idx1, lo, hi, n_tiles = _program_list(idx0_ptr, idx1_ptr, t, idx0_stride, idx1_stride, k0_len, k1_len,
                                                    split, split_len, BLOCK_K)
        dest = (out_ptr, sink_ptr, part_o_ptr, part_lse_ptr, t, hb, split, H, o_stride_t, o_stride_h)
        gl.warp_specialize([
            (_score, (bufs, idx0, idx1, k0_len, lo, hi, n_tiles, qk_scale, dest, BH, D, BLOCK_K, NUM_BUF, NUM_SPLITS)),
            (_help, (bufs, n_tiles, dest, BH, D, BLOCK_K, NUM_BUF, NUM_SPLITS)),
            (_load_rows, (src0_ptr, idx0, src1_ptr, idx1, k0_len, row0_stride, row1_stride, lo, hi, n_tiles,
                          kv_smem, full, empty, BLOCK_K, D, NUM_BUF)),
        ], [_HELPER_WARPS, LOAD_WARPS], [_HELPER_REGS, LOAD_REGS])


@functools.lru_cache(maxsize=None)
def device_unsupported_reason(device: torch.device) -> str | None:
    """Why this kernel cannot run on `device` (None if it can): Gluon and a Hopper GPU (wgmma). A fact of
    the device: asked once, not per call."""
    if not HAS_GLUON:
        return "needs triton.experimental.gluon (Triton >= 3.5)"
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return "needs a Hopper GPU (SM 9.x): wgmma"
    return None


def _page_layout(src):
    """The fp8_ds_mla layout of a source, or None for plain rows."""
    return None if isinstance(src, torch.Tensor) else src.layout


def unsupported_reason(q: torch.Tensor, sources) -> str | None:
    """Why the Hopper kernels cannot take the call (None if they can): the device's reason, else q of 512
    channels over one or two sources of one format: plain rows in q's dtype (bf16/fp16), or fp8_ds_mla pages
    of V4's layout with bf16 q."""
    reason = device_unsupported_reason(q.device)
    if reason is not None:
        return reason
    if q.dtype not in (torch.bfloat16, torch.float16) or q.shape[2] != 512:
        return "takes bf16/fp16 q with a 512-channel latent"
    if not 1 <= len(sources) <= 2:
        return "takes one or two sources"
    layouts = [_page_layout(src) for src, _ in sources]
    if any(lay is not None for lay in layouts):
        if any(lay is None for lay in layouts):
            return "takes sources of one format (plain rows or fp8_ds_mla pages), not both"
        if q.dtype != torch.bfloat16:
            return "takes bf16 q over fp8_ds_mla pages (they dequantize into bf16)"
        return next(filter(None, map(fp8_pages.layout_unsupported_reason, layouts)), None)
    for src, _ in sources:
        rows = src if isinstance(src, torch.Tensor) else src.data
        if rows.dtype != q.dtype:
            return f"takes plain latent rows in q's dtype ({q.dtype}), got {rows.dtype}"
    return None


def takes(q: torch.Tensor, sources) -> bool:
    """Whether a Hopper kernel should serve this call: one can, and the call is big enough."""
    rows = sum(i.shape[1] for _, i in sources)  # the arithmetic first: small calls skip the format checks
    return big_enough(q.shape[0] * triton.cdiv(q.shape[1], BLOCK_H), rows) and unsupported_reason(q, sources) is None


def big_enough(programs: int, rows: int) -> bool:
    """At least MIN_WORK (query, 64-head block) x list rows. Below, the portable kernel's narrower programs
    win: a 64-head program's list is one dependent chain. H200, V4-Flash, us portable / sm90
    (h200_sparse_attn_sm90_small.json): CSA (640 rows) 1 request 8.0 / 11.7, 8: 15.1 / 14.1, 16: 24.6 / 16.1;
    HCA 4K (160 rows) 16 requests 12.0 / 15.7, 128: 21.9 / 20.4. fp8_ds_mla pages cross at the same points
    (h200_sparse_attn_sm90_fp8.json, _sweep.json, the fp8 kernel before its stop-23 load warps): CSA 1 request
    13.9 / 17.7, 8: 25.6 / 17.4; HCA 4K 16 requests 18.9 / 21.7, 128: 43.7 / 31.9. The current fp8 kernel:
    8 requests 25.1 / 13.8 (h200_sparse_attn_sm90_fp8_side.json); below 8 not re-timed."""
    return programs * rows >= MIN_WORK


def sparse_attn_sm90(q: torch.Tensor, sources, sink: torch.Tensor, scale: float, *, block_k: int | None = None,
                     num_buf: int | None = None, num_splits: int | None = None) -> torch.Tensor:
    """sparse_attn_ref's contract on Hopper (see `unsupported_reason` for what it takes). Plain rows: row tiles
    of block_k rows in a ring of num_buf (default BLOCK_K, NUM_BUF); fp8_ds_mla pages: the fp8 kernel's own
    tiles (`sparse_attn_sm90_fp8`; block_k and num_buf are for plain rows). Splits of the lists as the
    portable kernel's."""
    reason = unsupported_reason(q, sources)
    assert reason is None, f"sparse_attn_sm90 {reason}"
    return launch(q, sources, sink, scale, block_k=block_k, num_buf=num_buf, num_splits=num_splits)


def launch(q: torch.Tensor, sources, sink: torch.Tensor, scale: float, *, block_k: int | None = None,
           num_buf: int | None = None, num_splits: int | None = None) -> torch.Tensor:
    """`sparse_attn_sm90` for a call already known to be taken (`takes`): the backend asks once per layer
    call, not twice."""
    assert q.stride(2) == 1, "q must be [T, H, D] with unit stride on D"
    if _page_layout(sources[0][0]) is not None:
        return fp8_pages.sparse_attn_sm90_fp8(q, sources, sink, scale, num_splits=num_splits)
    block_k = BLOCK_K if block_k is None else block_k
    num_buf = NUM_BUF if num_buf is None else num_buf
    assert block_k in (32, 64) and num_buf >= 2, "block_k 32 or 64, at least 2 buffers"
    if q.shape[0] == 0:
        return torch.empty_like(q)
    plan = plan_launch(q, sources, block_k, num_splits)
    _sparse_attn_sm90_kernel[plan.grid](
        *plan.kernel_args(q, sink, scale, lambda src: src.row_stride), D=q.shape[2], BLOCK_K=block_k,
        NUM_BUF=num_buf, NUM_SPLITS=plan.num_splits, LOAD_WARPS=LOAD_WARPS, LOAD_REGS=LOAD_REGS[block_k],
        num_warps=SCORER_WARPS)
    return finish_launch(plan, sink)
