"""The fp8_ds_mla byte layout against spec §5.1."""

from __future__ import annotations

import pytest
import torch

from vllm.kernels.fp8_ds_mla import Fp8DsMlaLayout, gather_ref, insert_ref


def test_v4_sizes():
    lay = Fp8DsMlaLayout()
    assert (lay.token_bytes, lay.data_bytes, lay.scale_bytes) == (584, 576, 8)
    assert lay.page_bytes == 37440  # 64 * 584 = 37376 rounded up to a multiple of 576


def test_byte_positions_in_a_page():
    lay = Fp8DsMlaLayout(block_size=4)
    cache = torch.zeros(3, lay.page_bytes, dtype=torch.uint8)
    kv = torch.zeros(1, 512)
    kv[0, 0] = 1.0  # tile 0 amax 1 -> scale 2^ceil(log2(1/448)) = 2^-8 -> byte 119; 1/2^-8 = 256 in e4m3
    kv[0, 64:128] = 100.0  # tile 1: scale 2^ceil(log2(100/448)) = 2^-2 -> byte 125
    kv[0, 448] = 1.5  # first rope value, bf16 0x3FC0
    insert_ref(cache, kv, torch.tensor([1 * 4 + 2]), lay)  # page 1, offset 2
    page = cache[1]
    data = page[2 * 576: 3 * 576]
    assert data[0].item() == torch.tensor([256.0]).to(torch.float8_e4m3fn).view(torch.uint8).item()
    assert data[448:450].tolist() == [0xC0, 0x3F]  # little-endian bf16
    scales = page[4 * 576 + 2 * 8: 4 * 576 + 3 * 8]
    assert scales[:2].tolist() == [119, 125] and scales[7].item() == 0  # 7 scales + 1 pad byte
    assert cache[0].sum() == 0 and cache[2].sum() == 0 and page[:2 * 576].sum() == 0


@pytest.mark.parametrize("block_size", [1, 16, 64])
def test_roundtrip_and_skip(block_size):
    lay = Fp8DsMlaLayout(block_size=block_size)
    g = torch.Generator().manual_seed(0)
    kv = torch.randn(10, 512, generator=g) * torch.logspace(-3, 2, 10)[:, None]
    pages = -(-10 // block_size) + 2
    slots = torch.randperm(pages * block_size, generator=g)[:10]
    slots[3] = -1
    cache = torch.zeros(pages, lay.page_bytes, dtype=torch.uint8)
    insert_ref(cache, kv, slots, lay)
    keep = slots >= 0
    back = gather_ref(cache, slots[keep], lay)
    ref = kv[keep]
    torch.testing.assert_close(back[:, 448:], ref[:, 448:].bfloat16().float())
    tile_amax = ref[:, :448].view(-1, 7, 64).abs().amax(-1, keepdim=True)
    err = (back[:, :448] - ref[:, :448]).view(-1, 7, 64).abs()
    assert (err <= ref[:, :448].view(-1, 7, 64).abs() * 2**-4 + tile_amax / 224 * 2**-9 + 1e-12).all()
