"""Bit-exact number-format helpers for Triton kernels (spec §4.2): encode fp32 to e4m3 / bf16 with
round-to-nearest-even, read a UE8M0 exponent, decode e2m1 (MXFP4) with its UE8M0 scale.

Integer arithmetic only, so results are identical on every GPU (no fp8 convert instruction
needed) and in Triton's interpreter, whose own fp32->fp8 cast is wrong (124.0 -> 64.0).
"""

from __future__ import annotations

from vllm.kernels._triton import tl, triton


@triton.jit
def e4m3_bits(x):
    """fp32 (|x| <= 448) -> e4m3 byte, round to nearest even, as torch's cast."""
    a = tl.abs(x)
    sign = (x < 0).to(tl.int32) << 7
    # subnormals (a < 2^-6): count of 2^-9 steps, rounded half-even by the 2^23 trick
    sub = ((a * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)
    bits = a.to(tl.int32, bitcast=True)
    exp = ((bits >> 23) & 0xFF) - 127
    mant = bits & 0x7FFFFF
    m = mant >> 20
    rest = mant & 0xFFFFF
    up = ((rest > 0x80000) | ((rest == 0x80000) & ((m & 1) == 1))).to(tl.int32)
    normal = ((exp + 7) << 3) + m + up  # a carry out of the mantissa bumps the exponent
    return (tl.where(a < 0.015625, sub, normal) | sign).to(tl.uint8)


@triton.jit
def bf16_bits(x):
    """fp32 -> bf16 bit pattern (int16), round to nearest even (finite inputs)."""
    bits = x.to(tl.int32, bitcast=True)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return r.to(tl.int16)


@triton.jit
def ue8m0_exponent(amax, qmax):
    """e = ceil(log2(amax / qmax)) exactly (int32): IEEE division, exponent read from the bits.
    amax must keep amax / qmax a normal fp32 (the amax floors do)."""
    bits = tl.div_rn(amax, qmax).to(tl.int32, bitcast=True)
    return ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)


@triton.jit
def pow2(e):
    """int32 exponent in [-126, 127] -> fp32 2^e, built from the bits (exact)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def e2m1_scaled(code, scale_byte):
    """MXFP4 nibble (int32 0..15: sign bit 3, e2m1 magnitude bits 0-2) times its UE8M0 scale byte
    (int32 2..254) -> fp32, exactly: the scale's exponent is added into the value's bits."""
    mag = code & 7
    e = mag >> 1
    m = mag & 1
    # e > 0: (1 + m/2) * 2^(e-1);  e == 0: m * 2^-1 (0.5 or 0)
    field = tl.where(e > 0, e - 1 + scale_byte, scale_byte - 1)
    bits = (field << 23) | tl.where(e > 0, m << 22, 0)
    bits = tl.where(mag == 0, 0, bits) | ((code >> 3) << 31)
    return bits.to(tl.float32, bitcast=True)
