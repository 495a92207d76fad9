"""Candidate index lists for sparse attention (spec §3.8): which KV rows each query sees."""

from __future__ import annotations

import torch


def window_indices(positions: torch.Tensor, pool_first_pos: int, window: int) -> torch.Tensor:
    """Rows of a raw-token pool (row 0 = position `pool_first_pos`) in each query's sliding window.

    positions `[T]` -> `[T, window]` int64: positions p-window+1 .. p, -1 where before the pool start.
    """
    offs = torch.arange(window - 1, -1, -1, device=positions.device)
    pos = positions[:, None].long() - offs[None, :]
    return torch.where(pos >= pool_first_pos, pos - pool_first_pos, -1)


def visible_compressed_indices(positions: torch.Tensor, ratio: int, num_entries: int) -> torch.Tensor:
    """All compressed entries a query may see (HCA): entry j iff j < (p+1)//ratio; `[T, num_entries]`, -1 else."""
    j = torch.arange(num_entries, device=positions.device)
    limit = (positions.long() + 1) // ratio
    return torch.where(j[None, :] < limit[:, None], j[None, :], -1)
