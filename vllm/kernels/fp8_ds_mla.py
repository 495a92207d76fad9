"""DeepSeek V4's FP8 latent KV cache layout (FlashMLA "MODEL1", `fp8_ds_mla`; spec §5.1) in torch.

Per token: `nope` FP8 e4m3 bytes, `rope` bf16 values, one UE8M0 scale per `tile` NoPE channels
(padded to `scale_align` bytes, 8). For V4 (512 = 448 + 64, tile 64): 448 + 128 + 7 + 1 = 584
bytes. A page of `block_size` tokens is not interleaved per token:

    [0, B*data)               token t at t*data: nope fp8 | rope bf16      (data = nope + 2*rope = 576)
    [B*data, B*(data+8))      token t at B*data + t*8: tile scales + pad
    padding                   page rounded up to a multiple of `data` bytes

`insert_ref` writes tokens at slots (slot = page * block_size + offset, -1 = skip);
`gather_ref` reads slots back dequantized. `insert` is the Triton quantize-and-insert kernel;
reads dequantize inside the attention kernel (`sparse_attn._load_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm.kernels._triton import next_pow2, tl, triton
from vllm.kernels.quant_codec import bf16_bits, e4m3_bits, pow2, ue8m0_exponent
from vllm.model_executor.layers.quantization.formats import FP8_AMAX_FLOOR, FP8_MAX, e8m0_to_float, float_to_e8m0, \
    ue8m0_scale


@dataclass(frozen=True)
class Fp8DsMlaLayout:
    nope: int = 448
    rope: int = 64
    tile: int = 64
    block_size: int = 64
    scale_align: int = 8
    """bytes each row's scales are padded to (8 for the latent rows; 4 for indexer keys)."""

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
        return -(-self.num_tiles // self.scale_align) * self.scale_align

    @property
    def token_bytes(self) -> int:
        return self.data_bytes + self.scale_bytes

    @property
    def page_bytes(self) -> int:
        raw = self.block_size * self.token_bytes
        return -(-raw // self.data_bytes) * self.data_bytes


def fp8_key_layout(head_dim: int, block_size: int) -> Fp8DsMlaLayout:
    """The FP8 indexer-key cache (spec §5.2): per entry `head_dim` e4m3 bytes and one UE8M0 scale
    for the whole row in a 4-byte slot (132 bytes for V4's 128-d keys); same page arrangement."""
    return Fp8DsMlaLayout(nope=head_dim, rope=0, tile=head_dim, block_size=block_size, scale_align=4)


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


@triton.jit
def _insert_kernel(cache_ptr, kv_ptr, slot_ptr, kv_stride, NOPE: tl.constexpr, ROPE: tl.constexpr,
                   TILE: tl.constexpr, NUM_TILES: tl.constexpr, TILES_P2: tl.constexpr, ROPE_P2: tl.constexpr,
                   PAGE_ROWS: tl.constexpr, PAGE_BYTES: tl.constexpr, DATA_BYTES: tl.constexpr,
                   SCALE_BYTES: tl.constexpr, FP8_MAX: tl.constexpr, AMAX_FLOOR: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        page = slot // PAGE_ROWS
        off = slot % PAGE_ROWS
        data = cache_ptr + page * PAGE_BYTES + off * DATA_BYTES
        tiles = tl.arange(0, TILES_P2)
        ch = tiles[:, None] * TILE + tl.arange(0, TILE)[None, :]  # [tiles, TILE] NoPE channel
        tmask = tiles < NUM_TILES
        x = tl.load(kv_ptr + t * kv_stride + ch, mask=tmask[:, None], other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), 1), AMAX_FLOOR)
        e = ue8m0_exponent(amax, FP8_MAX)  # s = 2^e exactly
        inv = pow2(-e)
        qv = e4m3_bits(tl.minimum(tl.maximum(x * inv[:, None], -FP8_MAX), FP8_MAX))
        tl.store(data + ch, qv, mask=tmask[:, None])
        sb = tl.arange(0, SCALE_BYTES)
        e_b = tl.sum(tl.where((sb[:, None] == tiles[None, :]) & tmask[None, :], (e + 127)[None, :], 0), 1)  # + zero pad
        tl.store(cache_ptr + page * PAGE_BYTES + PAGE_ROWS * DATA_BYTES + off * SCALE_BYTES + sb, e_b.to(tl.uint8))
        rc = tl.arange(0, ROPE_P2)
        rope = bf16_bits(tl.load(kv_ptr + t * kv_stride + NOPE + rc, mask=rc < ROPE, other=0.0).to(tl.float32))
        tl.store((data + NOPE + 2 * rc).to(tl.pointer_type(tl.int16)), rope, mask=rc < ROPE)


def insert(cache: torch.Tensor, kv: torch.Tensor, slot_mapping: torch.Tensor, layout: Fp8DsMlaLayout) -> None:
    """Triton `insert_ref`: cache `[pages, page_bytes]` uint8, kv `[T, nope+rope]` (unit stride on
    channels), slot_mapping `[T]` int (-1 = skip). One program per token."""
    assert cache.dtype == torch.uint8 and cache.shape[1] == layout.page_bytes, "cache is not an fp8_ds_mla page array"
    assert kv.dim() == 2 and kv.shape[1] == layout.nope + layout.rope and kv.stride(1) == 1
    assert slot_mapping.shape == (kv.shape[0],)
    assert layout.tile == next_pow2(layout.tile), "the scale tile must be a power of two"
    if kv.shape[0] == 0:
        return
    _insert_kernel[(kv.shape[0],)](
        cache, kv, slot_mapping, kv.stride(0), NOPE=layout.nope, ROPE=layout.rope, TILE=layout.tile,
        NUM_TILES=layout.num_tiles, TILES_P2=next_pow2(layout.num_tiles), ROPE_P2=next_pow2(layout.rope),
        PAGE_ROWS=layout.block_size, PAGE_BYTES=layout.page_bytes, DATA_BYTES=layout.data_bytes,
        SCALE_BYTES=layout.scale_bytes, FP8_MAX=FP8_MAX, AMAX_FLOOR=FP8_AMAX_FLOOR, num_warps=4)
