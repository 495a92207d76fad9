"""The torch references the backends share, against naive definitions and named corner cases."""

from __future__ import annotations

import torch

from vllm.attention.sparse_indices import visible_compressed_indices, window_indices
from vllm.kernels.indexer_topk import indexer_topk_ref
from vllm.kernels.sparse_attn import sparse_attn_ref


def _naive_attn(q, kv, idx, sink, scale):
    out = torch.zeros_like(q)
    for t in range(q.shape[0]):
        rows = [i for i in idx[t].tolist() if i >= 0]
        for h in range(q.shape[1]):
            s = torch.stack([q[t, h] @ kv[i] * scale for i in rows] + [sink[h]])
            p = torch.softmax(s, 0)[:-1]
            out[t, h] = sum((pi * kv[i] for pi, i in zip(p, rows)), torch.zeros(kv.shape[1]))
    return out


def test_sparse_attn_matches_naive_with_sink_and_invalid_indices():
    g = torch.Generator().manual_seed(0)
    q, kv = torch.randn(5, 3, 16, generator=g), torch.randn(12, 16, generator=g)
    idx = torch.randint(0, 12, (5, 6), generator=g)
    idx[1, 2:] = -1
    idx[3] = -1  # all invalid: the sink takes everything -> zeros
    sink = torch.randn(3, generator=g)
    out = sparse_attn_ref(q, kv, idx, sink, 0.25)
    torch.testing.assert_close(out, _naive_attn(q, kv, idx, sink, 0.25), rtol=1e-5, atol=1e-6)
    assert torch.equal(out[3], torch.zeros_like(out[3]))


def test_window_includes_current_token_and_skips_before_start():
    idx = window_indices(torch.tensor([0, 1, 5]), pool_first_pos=0, window=4)
    assert idx.tolist() == [[-1, -1, -1, 0], [-1, -1, 0, 1], [2, 3, 4, 5]]
    idx = window_indices(torch.tensor([10]), pool_first_pos=7, window=4)
    assert idx.tolist() == [[0, 1, 2, 3]]


def test_compressed_visibility_boundary():
    # ratio 4: entry j is complete once token 4j+3 is processed.
    idx = visible_compressed_indices(torch.tensor([2, 3, 7, 8]), ratio=4, num_entries=2)
    assert idx.tolist() == [[-1, -1], [0, -1], [0, 1], [0, 1]]


def test_indexer_topk_causal_and_padding():
    g = torch.Generator().manual_seed(1)
    q, keys = torch.randn(4, 2, 8, generator=g), torch.randn(5, 8, generator=g)
    w = torch.randn(4, 2, generator=g)
    pos = torch.tensor([2, 3, 11, 19])
    out = indexer_topk_ref(q, w, keys, pos, ratio=4, topk=3, softmax_scale=1.0)
    assert out.shape == (4, 3)
    assert out[0].tolist() == [-1, -1, -1]  # first token: nothing compressed yet
    assert out[1].tolist() == [0, -1, -1]  # top-k longer than the visible entries
    assert sorted(out[2].tolist()) == [0, 1, 2]
    scores = (torch.relu(torch.einsum("hd,nd->hn", q[3], keys)) * w[3][:, None]).sum(0)
    assert set(out[3].tolist()) == set(scores.topk(3).indices.tolist())
