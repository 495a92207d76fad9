"""DeepSeek V4's KV cache groups (spec §5.2/§5.4), from the model config and the cache config.

- `swa`: every main layer's raw latent rows; windowed (the last sliding_window - 1 positions).
- `compressed`: each compressed layer's entries (block_size/ratio per block) and, on CSA layers,
  the indexer keys; full history.
- `state.c{ratio}` (one per compressor kind): the compressor's projected [kv | score] rows of
  the carry-over positions (fp32), on CSA layers also the indexer compressor's; windowed.
The latent rows (swa, compressed) are model dtype, or fp8_ds_mla with kv_cache_dtype='fp8'; the
indexer keys then are FP8 too (one UE8M0 scale per key, `fp8_key_layout`).
"""

from __future__ import annotations

import math

import torch

from vllm.config.cache import CacheConfig
from vllm.core.kv_cache.specs import CompressorLookback, KVCacheGroupSpec, LayerTensorSpec, SlidingLookback
from vllm.kernels.fp8_ds_mla import Fp8DsMlaLayout, fp8_key_layout
from vllm.model_executor.models.deepseek_v4.config import CSA, DeepseekV4Config

FP8_SCALE_TILE = 64  # DeepSeek V4: 448 NoPE channels in 7 tiles


def fp8_layout(cfg: DeepseekV4Config, rows_per_block: int) -> Fp8DsMlaLayout:
    nope = cfg.head_dim - cfg.rope_dim
    tile = FP8_SCALE_TILE if nope % FP8_SCALE_TILE == 0 else 16  # small test models
    if nope % tile:
        raise ValueError(f"kv_cache_dtype='fp8' needs head_dim - rope_dim ({nope}) to be a multiple of 16")
    return Fp8DsMlaLayout(nope=nope, rope=cfg.rope_dim, tile=tile, block_size=rows_per_block)


def index_key_layout(cfg: DeepseekV4Config, rows_per_block: int) -> Fp8DsMlaLayout:
    di = cfg.index_head_dim
    if di & (di - 1) or di < 16:
        raise ValueError(f"kv_cache_dtype='fp8' stores indexer keys in FP8 and needs index_head_dim ({di}) to be a "
                         "power of two >= 16; use kv_cache_dtype='auto' for this model")
    return fp8_key_layout(di, rows_per_block)


def kv_cache_groups(cfg: DeepseekV4Config, cache: CacheConfig, dtype: torch.dtype) -> list[KVCacheGroupSpec]:
    bs = cache.block_size
    ratios = sorted({r for r in cfg.compress_ratios[:cfg.num_layers] if r})
    bad = [r for r in ratios if bs % r]
    if bad:
        lcm = math.lcm(bs, *ratios)
        raise ValueError(f"block_size={bs} is not a multiple of the compress ratio(s) {bad}; use a multiple of "
                         f"every ratio in {ratios}, e.g. block_size={lcm}")

    def latent(layer: int, name: str, rows: int) -> LayerTensorSpec:
        return LayerTensorSpec(layer, name, rows, cfg.head_dim, dtype, fp8_layout(cfg, rows) if cache.fp8 else None)

    swa, compressed, states = [], [], {}
    for layer in range(cfg.num_layers):
        kind, r = cfg.layer_types[layer], cfg.compress_ratios[layer]
        swa.append(latent(layer, "swa", bs))
        if not r:
            continue
        overlap = kind == CSA
        compressed.append(latent(layer, "compressed", bs // r))
        width = 2 * (2 if overlap else 1) * cfg.head_dim  # [kv | score], each coff * head_dim
        state = states.setdefault((r, overlap), [])
        state.append(LayerTensorSpec(layer, "state", r, width, torch.float32))
        if kind == CSA:
            compressed.append(LayerTensorSpec(layer, "index_keys", bs // r, cfg.index_head_dim, dtype,
                                              index_key_layout(cfg, bs // r) if cache.fp8 else None))
            state.append(LayerTensorSpec(layer, "index_state", r, 4 * cfg.index_head_dim, torch.float32))
    groups = [KVCacheGroupSpec("swa", bs, SlidingLookback(cfg.sliding_window), tuple(swa))]
    if compressed:
        groups.append(KVCacheGroupSpec("compressed", bs, None, tuple(compressed)))
    for (r, overlap), tensors in sorted(states.items()):
        groups.append(KVCacheGroupSpec(f"state.c{r}{'.overlap' if overlap else ''}", r,
                                       CompressorLookback(r, overlap), tuple(tensors)))
    return groups

