"""FP8 activation quantization (spec §3.9 item 3, §4.2): per token and per 128-channel block,
e4m3 values with a power-of-two (UE8M0) scale, `x ~= q * s`.

`act_quant_fp8_ref` is the torch reference (its dequantization is `quant_dequant_fp8_act`, the
model's QAT point); `act_quant_fp8` the Triton kernel, byte-identical to it (integer rounding).
"""

from __future__ import annotations

import torch

from vllm.kernels._triton import next_pow2, tl, triton
from vllm.kernels.quant_codec import e4m3_bits, pow2, ue8m0_exponent
from vllm.model_executor.layers.quantization.formats import FP8_AMAX_FLOOR, FP8_MAX, ue8m0_scale


def act_quant_fp8_ref(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x `[M, K]` -> (q `[M, K]` float8_e4m3fn, s `[M, ceil(K/block)]` fp32 powers of two)."""
    m, k = x.shape
    nb = -(-k // block)
    xf = torch.nn.functional.pad(x.float(), (0, nb * block - k)).view(m, nb, block)
    s = ue8m0_scale(xf.abs().amax(dim=-1), FP8_MAX, FP8_AMAX_FLOOR)  # [M, nb]
    q = (xf / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(m, nb * block)[:, :k].contiguous(), s


@triton.jit
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, x_stride, q_stride, s_stride, BLOCK: tl.constexpr,
                      ROWS: tl.constexpr, FP8_MAX: tl.constexpr, AMAX_FLOOR: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    b = tl.program_id(1)
    cols = b * BLOCK + tl.arange(0, BLOCK)
    ok = (rows < M)[:, None] & (cols < K)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(x_ptr + r64 * x_stride + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    e = ue8m0_exponent(tl.maximum(tl.max(tl.abs(x), 1), AMAX_FLOOR), FP8_MAX)  # [ROWS]
    q = e4m3_bits(tl.minimum(tl.maximum(x * pow2(-e)[:, None], -FP8_MAX), FP8_MAX))
    tl.store(q_ptr + r64 * q_stride + cols[None, :], q, mask=ok)
    tl.store(s_ptr + rows.to(tl.int64) * s_stride + b, pow2(e), mask=rows < M)


def act_quant_fp8(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `act_quant_fp8_ref`: x `[M, K]` (unit stride on K) -> (q float8_e4m3fn `[M, K]`,
    s fp32 `[M, ceil(K/block)]`). One program per (row group, channel block)."""
    assert x.dim() == 2 and x.stride(1) == 1, f"x must be [M, K] with unit stride on K, got {tuple(x.shape)}"
    assert block == next_pow2(block), f"quantization block {block} must be a power of two"
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.uint8, device=x.device)
    s = torch.empty(m, -(-k // block), dtype=torch.float32, device=x.device)
    rows = 1 if m < 64 else 4  # several rows per program once there are many (prefill)
    if m:
        _act_quant_kernel[(triton.cdiv(m, rows), s.shape[1])](
            x, q, s, m, k, x.stride(0), q.stride(0), s.stride(0), BLOCK=block, ROWS=rows, FP8_MAX=FP8_MAX,
            AMAX_FLOOR=FP8_AMAX_FLOOR, num_warps=1 if rows == 1 else 4)
    return q.view(torch.float8_e4m3fn), s
