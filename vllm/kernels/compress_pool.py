"""Compressor entries (spec §3.6): per-channel softmax over a window's candidates, weighted sum,
RMSNorm and RoPE.

State rows (one per token, fp32) are `[kv (width) | score (width)]`. A plain (HCA) entry pools
its window's `r` tokens over all `width = dim` channels. An overlapping (CSA) entry has
`width = 2*dim`: candidates are the previous window's tokens on channels `[0, dim)` and its own
window's tokens on channels `[dim, 2*dim)` (2r candidates; the previous window is absent, -1,
for entry 0). `compress_pool_ref` pools; `compress_entries_ref` finishes an entry (pool, round to
the model dtype, RMSNorm, RoPE) as the model does; `compress_entries` is the Triton kernel that
does all of it in one launch, gathering the state rows by slot.
"""

from __future__ import annotations

import torch

from vllm.kernels._triton import next_pow2, tl, triton
from vllm.kernels.quant_codec import bf16_bits
from vllm.kernels.sparse_attn import gather_rows
from vllm.kernels.rms_norm import rms_norm_ref
from vllm.model_executor.layers.rotary import apply_rope


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


def compress_entries_ref(state, window_slots: torch.Tensor, prev_slots: torch.Tensor | None, norm_weight: torch.Tensor,
                         eps: float, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Finished compressor entries `[E, dim]` in `dtype` (spec §3.6): the pooled entry rounded to
    `dtype`, RMSNorm (statistics in fp32, `norm_weight` `[dim]`), RoPE at the window's first position
    on the last 2*cos.shape[1] channels (cos / sin `[E, rope/2]` fp32, interleaved pairs)."""
    pooled = compress_pool_ref(state, window_slots, prev_slots, norm_weight.shape[0]).to(dtype)
    return apply_rope(rms_norm_ref(pooled, norm_weight, eps), cos, sin)


@triton.jit
def _round(x, BF16: tl.constexpr):
    """fp32 -> the entry dtype and back (bf16 by integer round-to-nearest-even: the same everywhere)."""
    if BF16:
        return (bf16_bits(x).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return x


@triton.jit
def _pool_window(state_ptr, slots_ptr, r, row_stride, kv_col, score_col, cols, cmask, m, den, num,
                 RC: tl.constexpr):
    """Online per-channel softmax over one window's candidates (RC rows at a time) into (m, den, num);
    absent rows (-1) count as score -inf."""
    for c0 in range(0, r, RC):
        c = c0 + tl.arange(0, RC)
        slots = tl.load(slots_ptr + c, mask=c < r, other=-1).to(tl.int64)
        ok = (slots >= 0)[:, None] & cmask[None, :]
        base = state_ptr + slots[:, None] * row_stride + cols[None, :]
        kv = tl.load(base + kv_col, mask=ok, other=0.0)
        score = tl.load(base + score_col, mask=ok, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(score, 0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_ref)
        p = tl.exp(score - m_ref[None, :])
        den = den * alpha + tl.sum(p, 0)
        num = num * alpha + tl.sum(p * kv, 0)
        m = m_new
    return m, den, num


@triton.jit
def _compress_entry_kernel(state_ptr, win_ptr, prev_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, r, dim, width, rope_half,
                           row_stride, slot_stride, cs_stride, out_stride, eps, OVERLAP: tl.constexpr,
                           RC: tl.constexpr, BLOCK_H: tl.constexpr, BF16: tl.constexpr):
    """One entry, all its channels: pool, round, RMSNorm, weight, RoPE on the last 2*rope_half channels."""
    e = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, 2 * BLOCK_H)
    cmask = cols < dim
    m = tl.full([2 * BLOCK_H], float("-inf"), tl.float32)
    den = tl.zeros([2 * BLOCK_H], tl.float32)
    num = tl.zeros([2 * BLOCK_H], tl.float32)
    own = dim if OVERLAP else 0  # own window's channels sit in the second half when overlapping
    m, den, num = _pool_window(state_ptr, win_ptr + e * slot_stride, r, row_stride, own, width + own, cols, cmask,
                               m, den, num, RC)
    if OVERLAP:
        m, den, num = _pool_window(state_ptr, prev_ptr + e * slot_stride, r, row_stride, 0, width, cols, cmask,
                                   m, den, num, RC)
    x = _round(tl.where(cmask, num / tl.where(cmask, den, 1.0), 0.0), BF16)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(x * x, 0) / dim + eps)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    y = _round(w * _round(x * rstd, BF16), BF16)
    ev, od = tl.split(tl.reshape(y, [BLOCK_H, 2]))  # channel pairs (2i, 2i+1)
    i = tl.arange(0, BLOCK_H)
    j = i - (dim // 2 - rope_half)  # rope pair index, < 0 on the NoPE channels
    rope = (j >= 0) & (2 * i < dim)
    c = tl.load(cos_ptr + e * cs_stride + j, mask=rope, other=1.0)
    s = tl.load(sin_ptr + e * cs_stride + j, mask=rope, other=0.0)
    ev2 = tl.where(rope, _round(ev * c - od * s, BF16), ev)
    od2 = tl.where(rope, _round(ev * s + od * c, BF16), od)
    out = out_ptr + e * out_stride + 2 * i
    tl.store(out, ev2.to(out_ptr.dtype.element_ty), mask=2 * i < dim)
    tl.store(out + 1, od2.to(out_ptr.dtype.element_ty), mask=2 * i < dim)


def compress_entries(state, window_slots: torch.Tensor, prev_slots: torch.Tensor | None, norm_weight: torch.Tensor,
                     eps: float, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Triton `compress_entries_ref` in one launch (one program per entry). state rows fp32
    `[S, 2*width]` (tensor or plain PagedRows, unit stride); slots int `[E, r]`; dtype fp32 or bf16."""
    rows = state if isinstance(state, torch.Tensor) else state.data
    assert rows.dtype == torch.float32 and rows.stride(1) == 1, "compressor state rows are fp32 [S, 2*width]"
    assert dtype in (torch.float32, torch.bfloat16), f"compressor entries in {dtype}: fp32 or bf16 only"
    e, r = window_slots.shape
    dim = norm_weight.shape[0]
    width = rows.shape[1] // 2
    assert width == (2 * dim if prev_slots is not None else dim), "state width does not match the compressor kind"
    assert dim % 2 == 0 and cos.shape == sin.shape == (e, cos.shape[1]) and 2 * cos.shape[1] <= dim
    out = torch.empty(e, dim, dtype=dtype, device=rows.device)
    if e == 0:
        return out
    window_slots = window_slots.contiguous()
    prev = prev_slots.contiguous() if prev_slots is not None else window_slots
    assert prev.shape == window_slots.shape
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    block_h = next_pow2(dim // 2)
    rc = max(1, min(next_pow2(r), 8192 // (2 * block_h)))  # candidate rows per step: bounds the [RC, dim] tiles
    _compress_entry_kernel[(e,)](
        rows, window_slots, prev, norm_weight.contiguous(), cos, sin, out, r, dim, width, cos.shape[1],
        rows.stride(0), window_slots.stride(0), cos.stride(0), out.stride(0), eps, OVERLAP=prev_slots is not None,
        RC=rc, BLOCK_H=block_h, BF16=dtype == torch.bfloat16, num_warps=4)
    return out
