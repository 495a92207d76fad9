"""KV cache specs (layers -> cache manager): what each cache group stores and which rows stay live.

A *group* is a set of per-layer tensors that share one block table per request. A block covers
`block_tokens` consecutive positions of a sequence. Two kinds of group:
- full history (lookback None): rows are kept for the whole sequence (compressed entries,
  indexer keys); the block table grows with the sequence;
- windowed (a Lookback): only rows of the last few positions are read again (raw sliding-window
  rows, compressor carry-over rows); blocks that fall wholly behind `first_needed` are freed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm.kernels.fp8_ds_mla import Fp8DsMlaLayout


@dataclass(frozen=True)
class SlidingLookback:
    """Raw latent rows: the next query at position P reads positions P-window+1 .. P."""

    window: int

    def first_needed(self, num_computed: int) -> int:
        return max(0, num_computed - self.window + 1)

    @property
    def max_behind(self) -> int:
        return self.window - 1


@dataclass(frozen=True)
class CompressorLookback:
    """Compressor carry-over rows: the tokens of the incomplete window, and for overlapping (CSA)
    compressors the whole previous window as well (its first half feeds the next entry)."""

    ratio: int
    overlap: bool

    def first_needed(self, num_computed: int) -> int:
        start = num_computed - num_computed % self.ratio
        return max(0, start - (self.ratio if self.overlap else 0))

    @property
    def max_behind(self) -> int:
        return (2 if self.overlap else 1) * self.ratio - 1


Lookback = SlidingLookback | CompressorLookback


@dataclass(frozen=True)
class LayerTensorSpec:
    """One layer's tensor in a group. Rows are `width` elements of `dtype`, or fp8_ds_mla rows."""

    layer_id: int
    name: str
    """'swa', 'compressed', 'index_keys', 'state' or 'index_state' (what the layer looks up)."""
    rows_per_block: int
    width: int
    dtype: torch.dtype
    fp8_layout: Fp8DsMlaLayout | None = None

    @property
    def block_bytes(self) -> int:
        if self.fp8_layout is not None:
            return self.fp8_layout.page_bytes
        return self.rows_per_block * self.width * self.dtype.itemsize


@dataclass(frozen=True)
class KVCacheGroupSpec:
    name: str
    block_tokens: int
    lookback: Lookback | None
    tensors: tuple[LayerTensorSpec, ...]

    @property
    def block_bytes(self) -> int:
        return sum(t.block_bytes for t in self.tensors)

    def first_needed(self, num_computed: int) -> int:
        return 0 if self.lookback is None else self.lookback.first_needed(num_computed)

    def live_blocks_per_seq(self) -> int:
        """Windowed groups: most blocks one sequence holds between steps."""
        assert self.lookback is not None
        return -(-self.lookback.max_behind // self.block_tokens) + 1
