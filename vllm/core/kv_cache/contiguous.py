"""Per-request contiguous KV state for DeepSeek V4 (spec §5.4): what decode must carry exactly.

Per layer: the last `window - 1` raw latent rows (the next token completes its window), the
compressed entries emitted so far, the compressor carry-over (projected rows of the incomplete
window and, for overlapping CSA windows, the previous window's overlap half), and on CSA layers
the indexer's keys and its own compressor carry. The paged, batched manager replaces this
class behind the same `LayerKVCache` surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _cat(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else torch.cat([a, b], dim=0)


@dataclass
class CompressorCarry:
    """Compressor state between forward chunks (all fp32)."""

    pending_kv: torch.Tensor | None = None
    """`[m, coff*d]` projected kv of tokens past the last complete window (m < ratio)."""
    pending_score: torch.Tensor | None = None
    """`[m, coff*d]` gate scores (+ ape) of the same tokens."""
    prev_kv: torch.Tensor | None = None
    """`[ratio, d]` overlap half (first d channels) of the last complete window; CSA only."""
    prev_score: torch.Tensor | None = None
    entries: int = 0
    """Entries emitted so far: the next window starts at position `entries * ratio`."""


class SlidingWindowKV:
    """Latent rows of the last `window - 1` tokens, kept in model dtype."""

    def __init__(self, window: int):
        self.window = window
        self.rows: torch.Tensor | None = None
        self.num_tokens = 0

    def extend(self, new_rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Append `[T, D]`; return (pool of old rows + new rows, position of pool row 0)."""
        pool = _cat(self.rows, new_rows)
        first_pos = self.num_tokens - (0 if self.rows is None else self.rows.shape[0])
        self.num_tokens += new_rows.shape[0]
        keep = self.window - 1
        self.rows = pool[max(0, pool.shape[0] - keep):] if keep > 0 else pool[:0]
        return pool, first_pos


class EntryList:
    """Append-only rows (compressed KV entries or indexer keys)."""

    def __init__(self):
        self.rows: torch.Tensor | None = None

    def extend(self, new_rows: torch.Tensor) -> torch.Tensor:
        if self.rows is None or new_rows.shape[0]:
            self.rows = _cat(self.rows, new_rows)
        return self.rows

    def __len__(self) -> int:
        return 0 if self.rows is None else self.rows.shape[0]


@dataclass
class LayerKVCache:
    """One layer's state for one request."""

    swa: SlidingWindowKV
    compressed: EntryList | None = None
    compressor: CompressorCarry | None = None
    index_keys: EntryList | None = None
    index_compressor: CompressorCarry | None = None


@dataclass
class SequenceKVCache:
    """All layers' state for one request (main layers, then MTP layers)."""

    layers: list[LayerKVCache] = field(default_factory=list)

    @classmethod
    def for_layers(cls, window: int, layer_kinds: list[tuple[bool, bool]]) -> "SequenceKVCache":
        """layer_kinds: per layer (has_compressor, has_indexer)."""
        layers = []
        for has_comp, has_idx in layer_kinds:
            layers.append(LayerKVCache(
                swa=SlidingWindowKV(window),
                compressed=EntryList() if has_comp else None,
                compressor=CompressorCarry() if has_comp else None,
                index_keys=EntryList() if has_idx else None,
                index_compressor=CompressorCarry() if has_idx else None,
            ))
        return cls(layers)
