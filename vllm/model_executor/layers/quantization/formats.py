"""Byte-exact torch references of DeepSeek V4's quantization formats (spec §2, §4.2).

- UE8M0 scale: a power of two 2^e stored as the biased exponent byte e + 127 (float8_e8m0fnu).
- FP8 e4m3 with power-of-two scales, per 128x128 weight block or per (token, 128-channel) block.
- MXFP4 (e2m1): two values per byte, low nibble = even element, one UE8M0 scale per 32 inputs.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0
FP4_MAX = 6.0
FP8_AMAX_FLOOR = 1e-4
FP4_AMAX_FLOOR = 6.0 * 2.0**-126
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """UE8M0 bytes (uint8 or float8_e8m0fnu, reinterpreted, never value-cast) -> fp32 2^(b-127)."""
    if scale.dtype != torch.uint8:
        scale = scale.view(torch.uint8)
    return torch.exp2(scale.float() - 127.0)


def float_to_e8m0(pow2: torch.Tensor) -> torch.Tensor:
    """Exact powers of two (fp32) -> UE8M0 bytes as uint8."""
    return (torch.log2(pow2).round() + 127).clamp(0, 254).to(torch.uint8)


def ue8m0_scale(amax: torch.Tensor, qmax: float, floor: float) -> torch.Tensor:
    """Power-of-two scale s = 2^ceil(log2(max(amax, floor) / qmax)) (reference act_quant, ue8m0).

    The exponent is read with frexp (r = m * 2^e, m in [0.5, 1)), so it is exact where a rounded
    log2 could land on the integer below."""
    mant, exp = torch.frexp(amax.float().clamp(min=floor) / qmax)
    return torch.ldexp(torch.ones_like(mant), exp - (mant == 0.5).to(exp.dtype))


def _blocks_2d(shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    return -(-shape[0] // block[0]), -(-shape[1] // block[1])


def expand_block_scale(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """[ceil(out/bo), ceil(in/bi)] fp32 -> [out, in] by repeating each block's value."""
    s = scale.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return s[: shape[0], : shape[1]]


def dequant_fp8_block(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """FP8 e4m3 `[out, in]` weight and UE8M0 `[ceil(out/bo), ceil(in/bi)]` scale -> fp32 `[out, in]`."""
    rows, cols = weight.shape[-2:]
    assert scale.shape[-2:] == _blocks_2d((rows, cols), block), f"scale {tuple(scale.shape)} for weight {tuple(weight.shape)}"
    return weight.float() * expand_block_scale(e8m0_to_float(scale), (rows, cols), block)


def quant_fp8_block(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `[out, in]` -> (e4m3 weight, uint8 UE8M0 scale per block)."""
    rows, cols = w.shape
    nb = _blocks_2d((rows, cols), block)
    pad = torch.zeros(nb[0] * block[0], nb[1] * block[1], dtype=torch.float32, device=w.device)
    pad[:rows, :cols] = w.float()
    tiles = pad.view(nb[0], block[0], nb[1], block[1])
    s = ue8m0_scale(tiles.abs().amax(dim=(1, 3)), FP8_MAX, FP8_AMAX_FLOOR)  # [nb0, nb1]
    q = (w.float() / expand_block_scale(s, (rows, cols), block)).clamp(-FP8_MAX, FP8_MAX)
    return q.to(torch.float8_e4m3fn), float_to_e8m0(s)


def quant_dequant_fp8_act(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Simulate per-token, per-`block`-channel FP8 activation quantization with UE8M0 scales (fp32 out)."""
    *lead, k = x.shape
    nb = -(-k // block)
    xf = torch.nn.functional.pad(x.float(), (0, nb * block - k)).view(*lead, nb, block)
    s = ue8m0_scale(xf.abs().amax(dim=-1, keepdim=True), FP8_MAX, FP8_AMAX_FLOOR)
    q = (xf / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s
    return q.view(*lead, nb * block)[..., :k]


def dequant_mxfp4(packed: torch.Tensor, scale: torch.Tensor, group: int = 32) -> torch.Tensor:
    """MXFP4 `[out, in/2]` int8/uint8 and UE8M0 `[out, in/group]` -> fp32 `[out, in]`."""
    b = packed.view(torch.uint8)
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device)
    vals = torch.stack([table[(b & 0xF).long()], table[(b >> 4).long()]], dim=-1)  # low nibble = even element
    vals = vals.flatten(-2)
    s = e8m0_to_float(scale).repeat_interleave(group, dim=-1)
    assert s.shape == vals.shape, f"mxfp4 scale {tuple(scale.shape)} for packed {tuple(packed.shape)}"
    return vals * s


def quant_mxfp4(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `[out, in]` (in % group == 0) -> (int8 packed `[out, in/2]`, uint8 UE8M0 `[out, in/group]`)."""
    rows, cols = w.shape
    assert cols % group == 0 and cols % 2 == 0, f"in-features {cols} must be a multiple of {group}"
    g = w.float().view(rows, cols // group, group)
    s = ue8m0_scale(g.abs().amax(-1, keepdim=True), FP4_MAX, FP4_AMAX_FLOOR)
    x = (g / s).clamp(-FP4_MAX, FP4_MAX).view(rows, cols)
    table = torch.tensor(E2M1_VALUES[:8], dtype=torch.float32, device=w.device)
    mag = (x.abs().unsqueeze(-1) - table).abs().argmin(-1)  # nearest e2m1 magnitude
    code = (mag | ((x < 0).long() << 3)).to(torch.uint8)
    packed = code[:, 0::2] | (code[:, 1::2] << 4)
    return packed.view(torch.int8), float_to_e8m0(s.squeeze(-1))
