"""Paged row storage of one layer's cache tensor: write rows at slots, gather rows by slot.

slot = block_id * rows_per_block + offset; -1 = no row (writes skip it, gathers return zeros).
Plain tensors store rows in their dtype; fp8_ds_mla tensors store DeepSeek's 584-byte latent
rows, quantized on write by the attention backend's insert (`fp8_insert`: the torch reference
or the Triton kernel); `gather` dequantizes with the reference (the Triton attention kernel
reads the pages itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm.core.kv_cache.specs import KVCacheGroupSpec, LayerTensorSpec
from typing import Callable

from vllm.kernels.fp8_ds_mla import gather_ref, insert_ref


class PagedRows:
    def __init__(self, spec: LayerTensorSpec, num_blocks: int, device: torch.device,
                 fp8_insert: Callable = insert_ref):
        self.spec = spec
        self.layout = spec.fp8_layout
        self.fp8_insert = fp8_insert
        if self.layout is not None:
            self.data = torch.zeros(num_blocks, self.layout.page_bytes, dtype=torch.uint8, device=device)
        else:
            self.data = torch.zeros(num_blocks * spec.rows_per_block, spec.width, dtype=spec.dtype, device=device)

    def write(self, rows: torch.Tensor, slots: torch.Tensor) -> None:
        """rows `[N, width]`, slots `[N]`."""
        if self.layout is not None:
            self.fp8_insert(self.data, rows, slots, self.layout)
            return
        keep = slots >= 0
        self.data[slots[keep]] = rows[keep].to(self.data.dtype)

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        """slots of any shape `[...]` -> rows `[..., width]` (fp8 rows come back fp32; -1 -> zeros)."""
        flat = slots.reshape(-1)
        valid = flat >= 0
        idx = flat.clamp(min=0)
        rows = gather_ref(self.data, idx, self.layout) if self.layout is not None else self.data[idx]
        rows = torch.where(valid[:, None], rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
        return rows.view(*slots.shape, rows.shape[-1])


@dataclass
class LayerCaches:
    """One layer's paged tensors (None where the layer has no such cache)."""

    swa: PagedRows
    compressed: PagedRows | None = None
    index_keys: PagedRows | None = None
    state: PagedRows | None = None
    index_state: PagedRows | None = None


def allocate_layer_caches(groups: list[KVCacheGroupSpec], num_blocks: list[int], num_layers: int,
                          device: torch.device, fp8_insert: Callable = insert_ref) -> list[LayerCaches]:
    """Per layer id: its tensors, each with its group's block count."""
    found: dict[int, dict[str, PagedRows]] = {i: {} for i in range(num_layers)}
    for g, n in zip(groups, num_blocks):
        for t in g.tensors:
            found[t.layer_id][t.name] = PagedRows(t, n, device, fp8_insert)
    return [LayerCaches(**found[i]) for i in range(num_layers)]
