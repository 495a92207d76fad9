"""Lightning indexer scores and causal top-k over compressed entries (spec §3.7).

`indexer_topk_ref` is the torch reference. `indexer_topk` scores with a Triton kernel (one
program per query and block of 128 entries: keys gathered by slot, q.k on the tensor cores, ReLU,
weighted head sum, causal mask) and selects with a Triton kernel (`topk_select`), a bounded chunk
of queries at a time, so long contexts never hold a [T, N] score matrix for the whole batch.
"""

from __future__ import annotations

import torch

from vllm.kernels._triton import dot_precision, next_pow2, tl, triton
from vllm.kernels.sparse_attn import gather_rows
from vllm.kernels.topk_select import topk_slots, topk_slots_ref

QUERY_CHUNK = 256


def indexer_scores_ref(q: torch.Tensor, weights: torch.Tensor, keys, entry_slots: torch.Tensor,
                       query_req: torch.Tensor, num_visible: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    """`[T, N]` fp32 scores, -inf for entries j >= num_visible[t] (arguments as indexer_topk_ref).

    score[t, j] = sum_h weights[t,h] * relu(q[t,h] . key_j) * softmax_scale."""
    slots = entry_slots[query_req]  # [T, N]
    visible = torch.arange(slots.shape[1], device=q.device)[None, :] < num_visible[:, None]
    kt = gather_rows(keys, torch.where(visible, slots, -1)).float()  # [T, N, Di]
    scores = torch.relu(torch.einsum("thd,tnd->thn", q.float(), kt)) * softmax_scale
    scores = (scores * weights.float()[..., None]).sum(1)
    return scores.masked_fill(~visible, float("-inf"))


def indexer_topk_ref(q: torch.Tensor, weights: torch.Tensor, keys, entry_slots: torch.Tensor,
                     query_req: torch.Tensor, num_visible: torch.Tensor, topk: int,
                     softmax_scale: float) -> torch.Tensor:
    """Top-k compressed entries per query, as rows (slots) of the key/entry storage.

    q `[T, Hi, Di]`, weights `[T, Hi]` (already x head-count scaling), keys: `[S, Di]` tensor or
    paged rows, entry_slots `[B, N]` (row of entry j of request b), query_req `[T]`, num_visible
    `[T]` (entries j < num_visible[t] are visible), scores as indexer_scores_ref. Returns
    `[T, min(topk, N)]` slots, -1 where the query has fewer visible entries than slots.
    """
    return _select_in_query_chunks(indexer_scores_ref, topk_slots_ref, QUERY_CHUNK, q, weights, keys, entry_slots,
                                   query_req, num_visible, topk, softmax_scale)


def _select_in_query_chunks(score_fn, select_fn, chunk: int, q, weights, keys, entry_slots, query_req, num_visible,
                            topk, softmax_scale) -> torch.Tensor:
    """`select_fn`'s top-k slots over `score_fn`'s scores, `chunk` queries at a time (bounds the [chunk, N]
    scores); the torch and Triton paths differ only in the two functions and the chunk."""
    t, n = q.shape[0], entry_slots.shape[1]
    k = min(topk, n)
    if k == 0 or t == 0:
        return torch.full((t, k), -1, dtype=torch.long, device=q.device)
    parts = [select_fn(score_fn(q[s:s + chunk], weights[s:s + chunk], keys, entry_slots, query_req[s:s + chunk],
                                num_visible[s:s + chunk], softmax_scale), k, entry_slots, query_req[s:s + chunk])
             for s in range(0, t, chunk)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


SCORE_ELEMENTS = 1 << 26  # fp32 scores held at once by the launcher (256 MiB)


@triton.jit
def _indexer_scores_kernel(q_ptr, w_ptr, key_ptr, entry_ptr, req_ptr, vis_ptr, out_ptr, N, HI,
                           q_stride_t, q_stride_h, w_stride_t, key_stride, entry_stride, out_stride, scale,
                           page_bytes, DI: tl.constexpr, BLOCK_HI: tl.constexpr, BLOCK_DI: tl.constexpr,
                           BLOCK_N: tl.constexpr, IS_FP8: tl.constexpr, PAGE_ROWS: tl.constexpr,
                           SCALE_BYTES: tl.constexpr, PRECISION: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    nb = tl.program_id(1)
    j = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    visible = tl.load(vis_ptr + t)
    in_range = j < N
    if nb * BLOCK_N < visible:
        req = tl.load(req_ptr + t).to(tl.int64)
        vis = j < visible
        slots = tl.load(entry_ptr + req * entry_stride + j, mask=vis, other=-1)
        vis = vis & (slots >= 0)
        d = tl.arange(0, BLOCK_DI)
        h = tl.arange(0, BLOCK_HI)
        kmask = vis[:, None] & (d < DI)[None, :]
        q = tl.load(q_ptr + t * q_stride_t + h[:, None] * q_stride_h + d[None, :],
                    mask=(h < HI)[:, None] & (d < DI)[None, :], other=0.0)  # [HI, DI]
        if IS_FP8:  # paged e4m3 keys: the row's power-of-two scale applies after the dot (exact)
            # int32 slots and a constant page size: a shift, not a 64-bit division (2.7x on an H200)
            slot32 = slots.to(tl.int32)
            page, off = (slot32 // PAGE_ROWS).to(tl.int64), slot32 % PAGE_ROWS
            keys = tl.load(key_ptr + page[:, None] * page_bytes + (off * DI)[:, None] + d[None, :], mask=kmask,
                           other=0).to(tl.float8e4nv, bitcast=True)
            sbyte = tl.load(key_ptr + page * page_bytes + PAGE_ROWS * DI + off * SCALE_BYTES, mask=vis, other=127)
            kscale = tl.exp2(sbyte.to(tl.float32) - 127.0)
        else:
            keys = tl.load(key_ptr + slots.to(tl.int64)[:, None] * key_stride + d[None, :], mask=kmask,
                           other=0.0)  # [BN, DI]
            kscale = tl.full([BLOCK_N], 1.0, tl.float32)
        s = tl.dot(q, tl.trans(keys.to(q.dtype)), input_precision=PRECISION) * kscale[None, :]
        w = tl.load(w_ptr + t * w_stride_t + h, mask=h < HI, other=0.0).to(tl.float32) * scale
        score = tl.sum(tl.maximum(s, 0.0) * w[:, None], 0)  # [BN]
        tl.store(out_ptr + t * out_stride + j, tl.where(vis, score, float("-inf")), mask=in_range)
    else:  # the whole block is in the query's future
        tl.store(out_ptr + t * out_stride + j, tl.full([BLOCK_N], float("-inf"), tl.float32), mask=in_range)


def indexer_scores(q: torch.Tensor, weights: torch.Tensor, keys, entry_slots: torch.Tensor,
                   query_req: torch.Tensor, num_visible: torch.Tensor, softmax_scale: float,
                   block_n: int = 128) -> torch.Tensor:
    """`[T, N]` fp32 scores (-inf where not visible). q `[T, Hi, Di]`, weights `[T, Hi]`, keys: `[S, Di]`
    rows (tensor or plain PagedRows, unit stride) or FP8 PagedRows (`fp8_key_layout`), entry_slots
    `[B, N]`, query_req / num_visible `[T]`."""
    t, hi, di = q.shape
    n = entry_slots.shape[1]
    layout = None if isinstance(keys, torch.Tensor) else keys.layout
    rows = keys if isinstance(keys, torch.Tensor) else keys.data
    assert q.stride(2) == 1 and weights.shape == (t, hi) and entry_slots.stride(1) == 1
    if layout is None:
        assert rows.dim() == 2 and rows.stride(1) == 1 and rows.shape[1] == di, "keys must be [S, Di], unit stride"
        fp8 = dict(page_bytes=1, PAGE_ROWS=1, SCALE_BYTES=1)
    else:
        assert (layout.nope, layout.rope, layout.num_tiles) == (di, 0, 1), "FP8 keys need fp8_key_layout(Di, ...)"
        assert rows.dtype == torch.uint8 and rows.shape[1] == layout.page_bytes
        fp8 = dict(page_bytes=layout.page_bytes, PAGE_ROWS=layout.block_size, SCALE_BYTES=layout.scale_bytes)
    out = torch.empty(t, n, dtype=torch.float32, device=q.device)
    if t and n:
        _indexer_scores_kernel[(t, triton.cdiv(n, block_n))](
            q, weights, rows, entry_slots, query_req, num_visible, out, n, hi, q.stride(0), q.stride(1),
            weights.stride(0), rows.stride(0), entry_slots.stride(0), out.stride(0), softmax_scale, DI=di,
            BLOCK_HI=max(16, next_pow2(hi)), BLOCK_DI=max(16, next_pow2(di)), BLOCK_N=block_n,
            IS_FP8=layout is not None, PRECISION=dot_precision(q.dtype), num_warps=4, **fp8)
    return out


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, keys, entry_slots: torch.Tensor, query_req: torch.Tensor,
                 num_visible: torch.Tensor, topk: int, softmax_scale: float) -> torch.Tensor:
    """Triton scores, then the Triton select (`topk_select.topk_slots`), a bounded chunk of queries at a time,
    with indexer_topk_ref's contract (keys: tensor, plain or FP8 PagedRows) except the order within a row:
    the chosen slots come in entry order, not best first (ties at the k-th score may pick other entries)."""
    chunk = max(1, SCORE_ELEMENTS // max(1, entry_slots.shape[1]))
    return _select_in_query_chunks(indexer_scores, topk_slots, chunk, q, weights, keys, entry_slots, query_req,
                                   num_visible, topk, softmax_scale)
