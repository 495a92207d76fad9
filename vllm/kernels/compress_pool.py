"""Compressor pooling (spec §3.6): per-channel softmax over a window's candidates, weighted sum.

State rows (one per token, fp32) are `[kv (width) | score (width)]`. A plain (HCA) entry pools
its window's `r` tokens over all `width = dim` channels. An overlapping (CSA) entry has
`width = 2*dim`: candidates are the previous window's tokens on channels `[0, dim)` and its own
window's tokens on channels `[dim, 2*dim)` (2r candidates; the previous window is absent, -1,
for entry 0). `compress_pool_ref` is the torch reference, `compress_pool` the Triton kernel
that gathers the state rows by slot and pools in one pass.
"""

from __future__ import annotations

import torch

from vllm.kernels._triton import next_pow2, tl, triton
from vllm.kernels.sparse_attn import gather_rows


def compress_pool_ref(state, window_slots: torch.Tensor, prev_slots: torch.Tensor | None, dim: int) -> torch.Tensor:
    """state: rows `[S, 2*width]` fp32 (tensor or PagedRows); window_slots `[E, r]`; prev_slots `[E, r]`
    (overlapping) or None (plain) -> entries `[E, dim]` fp32."""
    win = gather_rows(state, window_slots).float()  # [E, r, 2*width]
    width = win.shape[-1] // 2
    kv, score = win[..., :width], win[..., width:]
    if prev_slots is not None:
        prev = gather_rows(state, prev_slots).float()
        prev_score = prev[..., width:width + dim].masked_fill((prev_slots < 0)[..., None], float("-inf"))
        kv = torch.cat([prev[..., :dim], kv[..., dim:]], dim=1)
        score = torch.cat([prev_score, score[..., dim:]], dim=1)
    return (kv * torch.softmax(score, dim=1)).sum(dim=1)


@triton.jit
def _pool_candidates(state_ptr, slots_ptr, r, row_stride, kv_col, score_col, cols, cmask, R: tl.constexpr):
    """(kv, score) `[R, BD]` of one window's tokens at channel columns; score -inf for absent rows."""
    c = tl.arange(0, R)
    slots = tl.load(slots_ptr + c, mask=c < r, other=-1).to(tl.int64)
    ok = (slots >= 0)[:, None] & cmask[None, :]
    base = state_ptr + slots[:, None] * row_stride + cols[None, :]
    kv = tl.load(base + kv_col, mask=ok, other=0.0)
    score = tl.load(base + score_col, mask=ok, other=float("-inf"))
    return kv, score


@triton.jit
def _compress_pool_kernel(state_ptr, win_ptr, prev_ptr, out_ptr, r, dim, width, row_stride, slot_stride,
                          out_stride, OVERLAP: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr):
    e = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < dim
    own = dim if OVERLAP else 0  # own window's channels sit in the second half when overlapping
    kv, score = _pool_candidates(state_ptr, win_ptr + e * slot_stride, r, row_stride, own, width + own, cols,
                                 cmask, R)
    m = tl.max(score, 0)
    if OVERLAP:
        pkv, pscore = _pool_candidates(state_ptr, prev_ptr + e * slot_stride, r, row_stride, 0, width, cols,
                                       cmask, R)
        m = tl.maximum(m, tl.max(pscore, 0))
    m = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp(score - m[None, :])
    num = tl.sum(p * kv, 0)
    den = tl.sum(p, 0)
    if OVERLAP:
        pp = tl.exp(pscore - m[None, :])
        num += tl.sum(pp * pkv, 0)
        den += tl.sum(pp, 0)
    tl.store(out_ptr + e * out_stride + cols, num / den, mask=cmask)


def compress_pool(state, window_slots: torch.Tensor, prev_slots: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Triton compress_pool_ref: state rows fp32 `[S, 2*width]` (tensor or plain PagedRows, unit stride),
    slots int `[E, r]` (window_slots all valid)."""
    rows = state if isinstance(state, torch.Tensor) else state.data
    assert rows.dtype == torch.float32 and rows.stride(1) == 1, "compressor state rows are fp32 [S, 2*width]"
    e, r = window_slots.shape
    width = rows.shape[1] // 2
    assert width == (2 * dim if prev_slots is not None else dim), "state width does not match the compressor kind"
    out = torch.empty(e, dim, dtype=torch.float32, device=rows.device)
    if e == 0:
        return out
    window_slots = window_slots.contiguous()
    prev = prev_slots.contiguous() if prev_slots is not None else window_slots
    assert prev.shape == window_slots.shape
    block_d = min(128, next_pow2(dim))
    _compress_pool_kernel[(e, triton.cdiv(dim, block_d))](
        rows, window_slots, prev, out, r, dim, width, rows.stride(0), window_slots.stride(0), out.stride(0),
        OVERLAP=prev_slots is not None, R=next_pow2(r), BLOCK_D=block_d, num_warps=4)
    return out
