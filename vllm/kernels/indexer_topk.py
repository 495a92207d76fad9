"""Lightning indexer scores and causal top-k over compressed entries (spec §3.7)."""

from __future__ import annotations

import torch

from vllm.kernels.sparse_attn import gather_rows

QUERY_CHUNK = 256


def indexer_topk_ref(q: torch.Tensor, weights: torch.Tensor, keys, entry_slots: torch.Tensor,
                     query_req: torch.Tensor, num_visible: torch.Tensor, topk: int,
                     softmax_scale: float) -> torch.Tensor:
    """Top-k compressed entries per query, as rows (slots) of the key/entry storage.

    q `[T, Hi, Di]`, weights `[T, Hi]` (already x head-count scaling), keys: `[S, Di]` tensor or
    paged rows, entry_slots `[B, N]` (row of entry j of request b), query_req `[T]`, num_visible
    `[T]` (entries j < num_visible[t] are visible). score[t, j] = sum_h weights[t,h] *
    relu(q[t,h] . key_j) * softmax_scale. Returns `[T, min(topk, N)]` slots, -1 where the query
    has fewer visible entries than slots.
    """
    n = entry_slots.shape[1]
    k = min(topk, n)
    out = torch.full((q.shape[0], k), -1, dtype=torch.long, device=q.device)
    if k == 0:
        return out
    entry = torch.arange(n, device=q.device)
    for s in range(0, q.shape[0], QUERY_CHUNK):
        slots = entry_slots[query_req[s:s + QUERY_CHUNK]]  # [t, N]
        limit = num_visible[s:s + QUERY_CHUNK]
        visible = entry[None, :] < limit[:, None]
        kt = gather_rows(keys, torch.where(visible, slots, -1)).float()  # [t, N, Di]
        scores = torch.relu(torch.einsum("thd,tnd->thn", q[s:s + QUERY_CHUNK].float(), kt)) * softmax_scale
        scores = (scores * weights[s:s + QUERY_CHUNK].float()[..., None]).sum(1)  # [t, N]
        top = scores.masked_fill(~visible, float("-inf")).topk(k, dim=-1).indices
        out[s:s + QUERY_CHUNK] = torch.where(top < limit[:, None], slots.gather(1, top), -1)
    return out
