"""Byte-level checks of the FP8 block, UE8M0 and MXFP4 references."""

from __future__ import annotations

import torch

from vllm.model_executor.layers.quantization.formats import (
    dequant_fp8_block,
    dequant_mxfp4,
    e8m0_to_float,
    quant_dequant_fp8_act,
    quant_fp8_block,
    quant_mxfp4,
)


def test_e8m0_is_reinterpreted_not_converted():
    raw = torch.tensor([120, 127, 130], dtype=torch.uint8)
    assert e8m0_to_float(raw.view(torch.float8_e8m0fnu)).tolist() == [2.0**-7, 1.0, 8.0]


def test_mxfp4_nibble_order_and_table():
    # byte 0x71: low nibble 1 -> 0.5 (element 0), high nibble 7 -> 6.0 (element 1); sign bit = 8.
    packed = torch.tensor([[0x71, 0x9A] + [0] * 14], dtype=torch.uint8).view(torch.int8)
    scale = torch.tensor([[128]], dtype=torch.uint8)  # 2^1
    w = dequant_mxfp4(packed, scale)
    assert w[0, :4].tolist() == [1.0, 12.0, -2.0, -1.0]


def test_mxfp4_roundtrip_of_representable_values():
    vals = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6, 0] * 4, dtype=torch.float32)
    w = torch.stack([vals * 4, vals / 8])
    packed, scale = quant_mxfp4(w)
    assert torch.equal(dequant_mxfp4(packed, scale), w)


def test_fp8_block_roundtrip_and_ragged_blocks():
    w = torch.randn(200, 130) * 3
    q, s = quant_fp8_block(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (2, 2)
    back = dequant_fp8_block(q, s)
    # e4m3: 3 mantissa bits (half-ulp 2^-4 relative); subnormal step 2^-9 x the block scale (<= amax/224).
    assert ((back - w).abs() <= w.abs() * 2**-4 + w.abs().max() / 224 * 2**-9).all()


def test_fp8_activation_scales_are_powers_of_two_per_block():
    x = torch.randn(3, 256)
    x[0, :128] *= 1000
    y = quant_dequant_fp8_act(x)
    bound = lambda v: v.abs() * 2**-4 + v.abs().max() / 224 * 2**-9  # noqa: E731
    assert ((y[0, :128] - x[0, :128]).abs() <= bound(x[0, :128])).all()
    # The huge block does not disturb its neighbour's scale.
    assert ((y[0, 128:] - x[0, 128:]).abs() <= bound(x[0, 128:])).all()
