"""Attention metadata (runner -> layers/backends): slots and candidate lists for one step.

Built once per step from the scheduled requests' positions and block tables, then shared by
every layer of the same kind. Slots are global rows of a layer's paged tensor
(block_id * rows_per_block + offset); -1 means "no row".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm.core.kv_cache.specs import CompressorLookback, KVCacheGroupSpec


@dataclass
class CompressedMetadata:
    """For the layers of one compressor kind (ratio, overlapping or not)."""

    ratio: int
    state_slots: torch.Tensor
    """`[T]` carry-over (state) row of each new token."""
    entry_slots: torch.Tensor
    """`[B, N]` compressed row of entry j of request b, -1 past the entries it has after this step."""
    num_visible: torch.Tensor
    """`[T]` entries query t may read: (position + 1) // ratio."""
    new_window_slots: torch.Tensor
    """`[E, ratio]` state rows of the tokens of each entry completed this step."""
    new_prev_slots: torch.Tensor
    """`[E, ratio]` state rows of the window before it (-1 for entry 0)."""
    new_entry_slots: torch.Tensor
    """`[E]` compressed row each completed entry is written to."""
    new_entry_positions: torch.Tensor
    """`[E]` first position of each completed entry's window (its RoPE position)."""

    def visible_slots(self, query_req: torch.Tensor) -> torch.Tensor:
        """`[T, N]` every entry each query may read (HCA), -1 elsewhere."""
        slots = self.entry_slots[query_req]
        j = torch.arange(slots.shape[1], device=slots.device)
        return torch.where(j[None, :] < self.num_visible[:, None], slots, -1)


@dataclass
class AttentionMetadata:
    positions: torch.Tensor
    """`[T]`."""
    query_req: torch.Tensor
    """`[T]` index of each token's request in the batch."""
    swa_slots: torch.Tensor
    """`[T]` sliding-window row each new token's latent is written to."""
    window_slots: torch.Tensor
    """`[T, window]` rows of positions p-window+1 .. p (-1 before position 0)."""
    compressed: dict[tuple[int, bool], CompressedMetadata] = field(default_factory=dict)
    """Per (ratio, overlap)."""


@dataclass(frozen=True)
class BatchEntry:
    start: int
    """Position of the request's first token this step (its computed tokens)."""
    num_tokens: int
    block_tables: list[list[int]]
    """Per cache group."""


def _table(entries: list[BatchEntry], gi: int, device) -> torch.Tensor:
    width = max(1, max(len(e.block_tables[gi]) for e in entries))
    rows = [e.block_tables[gi] + [-1] * (width - len(e.block_tables[gi])) for e in entries]
    return torch.tensor(rows, dtype=torch.long, device=device)


def _slots(table: torch.Tensor, req: torch.Tensor, row: torch.Tensor, rows_per_block: int) -> torch.Tensor:
    """Global slot of logical row `row` (token position or entry index) of request `req`."""
    blk = torch.div(row, rows_per_block, rounding_mode="floor")
    ok = (row >= 0) & (blk < table.shape[1])
    b = table[req, blk.clamp(0, table.shape[1] - 1)]
    return torch.where(ok & (b >= 0), b * rows_per_block + row % rows_per_block, -1)


def build_attention_metadata(entries: list[BatchEntry], groups: list[KVCacheGroupSpec], window: int,
                             block_size: int, device: torch.device) -> AttentionMetadata:
    names = {g.name: i for i, g in enumerate(groups)}
    lens = [e.num_tokens for e in entries]
    positions = torch.cat([torch.arange(e.start, e.start + e.num_tokens) for e in entries]).to(device)
    query_req = torch.repeat_interleave(torch.arange(len(entries)), torch.tensor(lens)).to(device)
    swa = _table(entries, names["swa"], device)
    back = torch.arange(window - 1, -1, -1, device=device)
    meta = AttentionMetadata(
        positions=positions, query_req=query_req,
        swa_slots=_slots(swa, query_req, positions, block_size),
        window_slots=_slots(swa, query_req[:, None], positions[:, None] - back[None, :], block_size))
    comp = _table(entries, names["compressed"], device) if "compressed" in names else None
    for gi, g in enumerate(groups):
        if isinstance(g.lookback, CompressorLookback):
            lb = g.lookback
            meta.compressed[(lb.ratio, lb.overlap)] = _compressed_metadata(
                entries, lb.ratio, _table(entries, gi, device), comp, block_size, positions, query_req, device)
    return meta


def _compressed_metadata(entries: list[BatchEntry], r: int, state: torch.Tensor, comp: torch.Tensor,
                         block_size: int, positions: torch.Tensor, query_req: torch.Tensor,
                         device) -> CompressedMetadata:
    per_block = block_size // r
    new_req, new_j = [], []
    for b, e in enumerate(entries):
        first, last = e.start // r, (e.start + e.num_tokens) // r  # entries [first, last) complete now
        new_req += [b] * (last - first)
        new_j += range(first, last)
    new_req_t = torch.tensor(new_req, dtype=torch.long, device=device)
    new_j_t = torch.tensor(new_j, dtype=torch.long, device=device)
    offs = torch.arange(r, device=device)
    window_pos = new_j_t[:, None] * r + offs[None, :]
    n_after = torch.tensor([(e.start + e.num_tokens) // r for e in entries], device=device)
    j = torch.arange(max(1, int(n_after.max())), device=device)
    all_req = torch.arange(len(entries), device=device)[:, None].expand(-1, j.shape[0])
    entry_slots = _slots(comp, all_req, j[None, :].expand_as(all_req), per_block)
    return CompressedMetadata(
        ratio=r,
        state_slots=_slots(state, query_req, positions, r),
        entry_slots=torch.where(j[None, :] < n_after[:, None], entry_slots, -1),
        num_visible=torch.div(positions + 1, r, rounding_mode="floor"),
        new_window_slots=_slots(state, new_req_t[:, None], window_pos, r),
        new_prev_slots=_slots(state, new_req_t[:, None], window_pos - r, r),
        new_entry_slots=_slots(comp, new_req_t, new_j_t, per_block),
        new_entry_positions=new_j_t * r)
