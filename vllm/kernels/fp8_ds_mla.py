"""DeepSeek V4's FP8 latent KV cache layout (FlashMLA "MODEL1", `fp8_ds_mla`; spec §5.1) in torch.

Per token: `nope` FP8 e4m3 bytes, `rope` bf16 values, one UE8M0 scale per `tile` NoPE channels
(padded to 8 bytes). For V4 (512 = 448 + 64, tile 64): 448 + 128 + 7 + 1 = 584 bytes. A page of
`block_size` tokens is not interleaved per token:

    [0, B*data)               token t at t*data: nope fp8 | rope bf16      (data = nope + 2*rope = 576)
    [B*data, B*(data+8))      token t at B*data + t*8: tile scales + pad
    padding                   page rounded up to a multiple of `data` bytes

`insert_ref` writes tokens at slots (slot = page * block_size + offset, -1 = skip);
`gather_ref` reads slots back dequantized. Triton versions implement the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm.model_executor.layers.quantization.formats import FP8_AMAX_FLOOR, FP8_MAX, e8m0_to_float, float_to_e8m0, \
    ue8m0_scale


@dataclass(frozen=True)
class Fp8DsMlaLayout:
    nope: int = 448
    rope: int = 64
    tile: int = 64
    block_size: int = 64

    def __post_init__(self):
        if self.nope % self.tile:
            raise ValueError(f"fp8_ds_mla needs nope ({self.nope}) to be a multiple of the scale tile ({self.tile})")

    @property
    def num_tiles(self) -> int:
        return self.nope // self.tile

    @property
    def data_bytes(self) -> int:
        return self.nope + 2 * self.rope

    @property
    def scale_bytes(self) -> int:
        return -(-self.num_tiles // 8) * 8

    @property
    def token_bytes(self) -> int:
        return self.data_bytes + self.scale_bytes

    @property
    def page_bytes(self) -> int:
        raw = self.block_size * self.token_bytes
        return -(-raw // self.data_bytes) * self.data_bytes


def quantize_token_ref(kv: torch.Tensor, layout: Fp8DsMlaLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """kv `[T, nope+rope]` -> (data bytes `[T, data_bytes]`, scale bytes `[T, scale_bytes]`) uint8."""
    t = kv.shape[0]
    nope = kv[:, : layout.nope].float().view(t, layout.num_tiles, layout.tile)
    s = ue8m0_scale(nope.abs().amax(-1, keepdim=True), FP8_MAX, FP8_AMAX_FLOOR)  # [T, tiles, 1]
    q = (nope / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(t, layout.nope)
    rope = kv[:, layout.nope:].to(torch.bfloat16).contiguous()
    data = torch.cat([q.view(torch.uint8), rope.view(torch.uint8).view(t, 2 * layout.rope)], dim=1)
    scales = torch.zeros(t, layout.scale_bytes, dtype=torch.uint8, device=kv.device)
    scales[:, : layout.num_tiles] = float_to_e8m0(s.squeeze(-1))
    return data, scales


def dequantize_token_ref(data: torch.Tensor, scales: torch.Tensor, layout: Fp8DsMlaLayout) -> torch.Tensor:
    """Inverse of quantize_token_ref -> fp32 `[T, nope+rope]`."""
    t = data.shape[0]
    q = data[:, : layout.nope].contiguous().view(torch.float8_e4m3fn).float().view(t, layout.num_tiles, layout.tile)
    s = e8m0_to_float(scales[:, : layout.num_tiles]).unsqueeze(-1)
    rope = data[:, layout.nope:].contiguous().view(torch.bfloat16).float()
    return torch.cat([(q * s).view(t, layout.nope), rope], dim=1)


def _offsets(slots: torch.Tensor, layout: Fp8DsMlaLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    page, off = slots // layout.block_size, slots % layout.block_size
    return page, off * layout.data_bytes, layout.block_size * layout.data_bytes + off * layout.scale_bytes


def insert_ref(cache: torch.Tensor, kv: torch.Tensor, slot_mapping: torch.Tensor, layout: Fp8DsMlaLayout) -> None:
    """cache `[num_pages, page_bytes]` uint8; kv `[T, D]`; slot_mapping `[T]` (-1 = skip). In place."""
    assert cache.dtype == torch.uint8 and cache.shape[1] == layout.page_bytes, "cache is not an fp8_ds_mla page array"
    keep = slot_mapping >= 0
    data, scales = quantize_token_ref(kv[keep], layout)
    page, d_off, s_off = _offsets(slot_mapping[keep].long(), layout)
    d_cols = d_off[:, None] + torch.arange(layout.data_bytes, device=cache.device)
    s_cols = s_off[:, None] + torch.arange(layout.scale_bytes, device=cache.device)
    cache[page[:, None], d_cols] = data
    cache[page[:, None], s_cols] = scales


def gather_ref(cache: torch.Tensor, slots: torch.Tensor, layout: Fp8DsMlaLayout) -> torch.Tensor:
    """Dequantized rows `[N, D]` fp32 for slots `[N]` (all >= 0)."""
    page, d_off, s_off = _offsets(slots.long(), layout)
    data = cache[page[:, None], d_off[:, None] + torch.arange(layout.data_bytes, device=cache.device)]
    scales = cache[page[:, None], s_off[:, None] + torch.arange(layout.scale_bytes, device=cache.device)]
    return dequantize_token_ref(data, scales, layout)
