"""Sparse MLA attention with a per-head sink over an index list (spec §3.8).

Each query attends to the KV rows its index list names (-1 = skip), one softmax over the
union, the sink adding exp(sink_h) to the denominator only. K and V are the same latent row.
"""

from __future__ import annotations

import torch

QUERY_CHUNK = 256  # bounds the [chunk, K, D] gather of the reference


def sparse_attn_ref(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sink: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """q `[T, H, D]`, kv `[N, D]`, indices `[T, K]` int (-1 invalid), sink `[H]` fp32 -> `[T, H, D]` in q.dtype.

    A query whose indices are all invalid returns zeros (the sink takes all the mass).
    """
    assert q.dim() == 3 and kv.dim() == 2 and indices.dim() == 2 and q.shape[0] == indices.shape[0]
    out = torch.empty_like(q)
    for s in range(0, q.shape[0], QUERY_CHUNK):
        idx = indices[s:s + QUERY_CHUNK].long()
        valid = idx >= 0
        rows = kv[idx.clamp(min=0)].float()  # [t, K, D]
        scores = torch.einsum("thd,tkd->thk", q[s:s + QUERY_CHUNK].float(), rows) * scale
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        sink_b = sink.float()[None, :, None].expand(scores.shape[0], -1, 1)
        m = torch.maximum(scores.amax(-1, keepdim=True), sink_b)
        p = torch.exp(scores - m)
        denom = p.sum(-1, keepdim=True) + torch.exp(sink_b - m)
        out[s:s + QUERY_CHUNK] = (torch.einsum("thk,tkd->thd", p, rows) / denom).to(q.dtype)
    return out
