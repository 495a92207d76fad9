"""Lightning indexer scores and causal top-k over compressed entries (spec §3.7)."""

from __future__ import annotations

import torch

QUERY_CHUNK = 256


def indexer_topk_ref(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor,
                     ratio: int, topk: int, softmax_scale: float) -> torch.Tensor:
    """Top-k compressed entries per query.

    q `[T, Hi, Di]`, weights `[T, Hi]` (already x head-count scaling), keys `[N, Di]`, positions `[T]`.
    score[t, j] = sum_h weights[t,h] * relu(q[t,h] . keys[j]) * softmax_scale, visible iff
    j < (positions[t] + 1) // ratio. Returns `[T, min(topk, N)]` int64 entry ids, -1 where the
    query has fewer visible entries than slots.
    """
    n = keys.shape[0]
    k = min(topk, n)
    out = torch.full((q.shape[0], k), -1, dtype=torch.long, device=q.device)
    if k == 0:
        return out
    entry = torch.arange(n, device=q.device)
    for s in range(0, q.shape[0], QUERY_CHUNK):
        qs = q[s:s + QUERY_CHUNK].float()
        scores = torch.relu(torch.einsum("thd,nd->thn", qs, keys.float())) * softmax_scale
        scores = (scores * weights[s:s + QUERY_CHUNK].float()[..., None]).sum(1)  # [t, N]
        limit = (positions[s:s + QUERY_CHUNK] + 1) // ratio
        future = entry[None, :] >= limit[:, None]
        top = scores.masked_fill(future, float("-inf")).topk(k, dim=-1).indices
        out[s:s + QUERY_CHUNK] = torch.where(top >= limit[:, None], -1, top)
    return out
