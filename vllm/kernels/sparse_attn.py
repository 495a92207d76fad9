"""Sparse MLA attention with a per-head sink over index lists (spec §3.8).

Each query attends to the KV rows its index lists name in one or more sources (the sliding-
window rows and the compressed entries, as FlashMLA's `k_cache` + `extra_k_cache`), -1 = skip;
one softmax over the union, the sink adding exp(sink_h) to the denominator only. K and V are
the same latent row. A source is a `[N, D]` tensor or paged rows with `.gather(slots)`.
"""

from __future__ import annotations

from typing import Sequence

import torch

QUERY_CHUNK = 256  # bounds the [chunk, K, D] gather of the reference


def gather_rows(source, idx: torch.Tensor) -> torch.Tensor:
    """Rows `[..., D]` of `source` at `idx` (any shape; -1 -> zeros)."""
    if isinstance(source, torch.Tensor):
        rows = source[idx.clamp(min=0)]
        return torch.where((idx >= 0)[..., None], rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
    return source.gather(idx)


def sparse_attn_ref(q: torch.Tensor, sources: Sequence[tuple[object, torch.Tensor]], sink: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """q `[T, H, D]`; sources: (kv rows, indices `[T, K_i]`); sink `[H]` fp32 -> `[T, H, D]` in q.dtype.

    A query whose indices are all invalid returns zeros (the sink takes all the mass).
    """
    assert q.dim() == 3 and all(i.dim() == 2 and i.shape[0] == q.shape[0] for _, i in sources)
    out = torch.empty_like(q)
    for s in range(0, q.shape[0], QUERY_CHUNK):
        idx = [i[s:s + QUERY_CHUNK].long() for _, i in sources]
        valid = torch.cat([i >= 0 for i in idx], dim=1)
        rows = torch.cat([gather_rows(src, i).float() for (src, _), i in zip(sources, idx)], dim=1)  # [t, K, D]
        scores = torch.einsum("thd,tkd->thk", q[s:s + QUERY_CHUNK].float(), rows) * scale
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        sink_b = sink.float()[None, :, None].expand(scores.shape[0], -1, 1)
        m = torch.maximum(scores.amax(-1, keepdim=True), sink_b)
        p = torch.exp(scores - m)
        denom = p.sum(-1, keepdim=True) + torch.exp(sink_b - m)
        out[s:s + QUERY_CHUNK] = (torch.einsum("thk,tkd->thd", p, rows) / denom).to(q.dtype)
    return out
