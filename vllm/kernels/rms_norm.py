"""RMSNorm (spec §2): y = x * rsqrt(mean(x^2) + eps), statistics in fp32, rounded to x's dtype; with a
weight, out = weight * y (the product in fp32, rounded to x's dtype again, as DeepSeek V4's reference).

`rms_norm_ref` is the torch reference (the `torch` backend); `rms_norm` the Triton launcher: one launch
for any number of rows, each program normalizing a [rows, D] tile held whole in registers (D up to
V4-Pro's 7168). The torch form is about ten elementwise and reduction launches; a decode step runs
five norms per layer (attention input, q and kv latents, per-head q, ffn input).
"""

from __future__ import annotations

import torch

from vllm.kernels._triton import next_pow2, tl, triton
from vllm.kernels.quant_codec import bf16_bits

MAX_DIM = 1 << 14  # a program holds its rows whole


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x `[..., D]`, weight `[D]` or None (weightless) -> x's shape and dtype."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else (weight.float() * y.float()).to(x.dtype)


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """fp32 -> dtype, to nearest even (bf16 by its bits: the interpreter's own bf16 cast truncates)."""
    if dtype == tl.bfloat16:
        return bf16_bits(x).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def inv_rms(sum_sq, D, eps):
    """1 / sqrt(sum_sq / D + eps): IEEE-rounded sqrt and divide, not the approximate rsqrt."""
    return tl.div_rn(1.0, tl.sqrt_rn(sum_sq / D + eps))


@triton.jit
def normalize(xf, r, w, DTYPE: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """x * r rounded to DTYPE, then (HAS_WEIGHT) times the fp32 weight w rounded again: rms_norm_ref's
    two roundings, on broadcastable fp32 x, r and w."""
    y = round_to(xf * r, DTYPE)
    if HAS_WEIGHT:
        y = round_to(w * y.to(tl.float32), DTYPE)
    return y


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, T, D, x_stride, o_stride, eps, HAS_WEIGHT: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < T)[:, None] & (cols < D)[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * x_stride + cols[None, :], mask=mask, other=0.0)
    xf = x.to(tl.float32)
    r = inv_rms(tl.sum(xf * xf, 1), D, eps)
    w = 1.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    y = normalize(xf, r[:, None], w, x.dtype, HAS_WEIGHT)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * o_stride + cols[None, :], y, mask=mask)


def launch_config(t: int, d: int) -> dict:
    """(block_t, num_warps): about 4K elements a program (rows of a narrow D share one), 4-16 warps."""
    block_d = next_pow2(d)
    block_t = max(1, min(next_pow2(t), 4096 // block_d))
    return dict(block_t=block_t, num_warps=max(4, min(16, block_t * block_d // 512)))


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Triton rms_norm_ref: x `[..., D]` (bf16/fp16/fp32, unit stride on D), weight `[D]` or None."""
    d = x.shape[-1]
    assert 0 < d <= MAX_DIM, f"rms_norm holds a row whole: D must be in [1, {MAX_DIM}], not {d}"
    assert weight is None or weight.shape == (d,), f"weight must be [{d}]"
    x2 = x.reshape(-1, d)
    assert x2.stride(-1) == 1, "rms_norm needs unit stride on the last dim"
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    t = x2.shape[0]
    if t == 0:
        return out.view(x.shape)
    cfg = launch_config(t, d)
    _rms_norm_kernel[(triton.cdiv(t, cfg["block_t"]),)](
        x2, weight.contiguous() if weight is not None else x2, out, t, d, x2.stride(0), out.stride(0), float(eps),
        HAS_WEIGHT=weight is not None, BLOCK_T=cfg["block_t"], BLOCK_D=next_pow2(d), num_warps=cfg["num_warps"])
    return out.view(x.shape)
