"""The torch references the backends share, against naive definitions and named corner cases."""

from __future__ import annotations

import torch

from vllm.attention.metadata import BatchEntry, build_attention_metadata
from vllm.core.kv_cache.specs import CompressorLookback, KVCacheGroupSpec, SlidingLookback
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
    out = sparse_attn_ref(q, [(kv, idx)], sink, 0.25)
    torch.testing.assert_close(out, _naive_attn(q, kv, idx, sink, 0.25), rtol=1e-5, atol=1e-6)
    assert torch.equal(out[3], torch.zeros_like(out[3]))


def test_sparse_attn_two_sources_is_one_softmax_over_the_union():
    g = torch.Generator().manual_seed(3)
    q, kv = torch.randn(4, 2, 8, generator=g), torch.randn(10, 8, generator=g)
    idx = torch.randint(-1, 10, (4, 7), generator=g)
    sink = torch.randn(2, generator=g)
    split = sparse_attn_ref(q, [(kv[:6], idx[:, :3].clamp(max=5)), (kv[6:], torch.where(idx[:, 3:] >= 6,
                                                                                       idx[:, 3:] - 6, -1))],
                            sink, 0.5)
    joined = torch.cat([idx[:, :3].clamp(max=5), torch.where(idx[:, 3:] >= 6, idx[:, 3:], -1)], dim=1)
    torch.testing.assert_close(split, sparse_attn_ref(q, [(kv, joined)], sink, 0.5))


GROUPS = [KVCacheGroupSpec("swa", 4, SlidingLookback(4), ()), KVCacheGroupSpec("compressed", 4, None, ()),
          KVCacheGroupSpec("state.c2", 2, CompressorLookback(2, False), ())]


def test_window_slots_follow_block_tables_and_skip_before_start():
    # request 0: positions 0,1 (prefill); request 1: decode at position 9 with blocks 7 (pos 4-7), 3 (8-11).
    entries = [BatchEntry(0, 2, [[5], [0], [1]]), BatchEntry(9, 1, [[-1, 7, 3], [2, 4, 6], [-1, -1, -1, -1, 8]])]
    meta = build_attention_metadata(entries, GROUPS, window=4, block_size=4, device=torch.device("cpu"))
    assert meta.swa_slots.tolist() == [20, 21, 13]
    assert meta.window_slots.tolist() == [[-1, -1, -1, 20], [-1, -1, 20, 21], [30, 31, 12, 13]]


def test_compressed_visibility_and_new_entries():
    # ratio 2, block_size 4 -> 2 entries per compressed block. Request 0 runs positions 0..4.
    entries = [BatchEntry(0, 5, [[0, 1], [3, 4], [0, 1, 2]])]
    cm = build_attention_metadata(entries, GROUPS, window=4, block_size=4, device=torch.device("cpu")).compressed[(2, False)]
    assert cm.num_visible.tolist() == [0, 1, 1, 2, 2]  # entry j complete once token 2j+1 is processed
    assert cm.new_entry_positions.tolist() == [0, 2]
    assert cm.new_entry_slots.tolist() == [6, 7]  # block 3, rows 0-1
    assert cm.new_window_slots.tolist() == [[0, 1], [2, 3]]
    assert cm.new_prev_slots.tolist() == [[-1, -1], [0, 1]]
    assert cm.state_slots.tolist() == [0, 1, 2, 3, 4]
    assert cm.visible_slots(torch.zeros(5, dtype=torch.long)).tolist() == [[-1, -1], [6, -1], [6, -1], [6, 7],
                                                                            [6, 7]]


def test_indexer_topk_causal_and_padding():
    g = torch.Generator().manual_seed(1)
    q, keys = torch.randn(4, 2, 8, generator=g), torch.randn(5, 8, generator=g)
    w = torch.randn(4, 2, generator=g)
    pos = torch.tensor([2, 3, 11, 19])
    out = indexer_topk_ref(q, w, keys, torch.arange(5)[None], torch.zeros(4, dtype=torch.long), (pos + 1) // 4,
                           topk=3, softmax_scale=1.0)
    assert out.shape == (4, 3)
    assert out[0].tolist() == [-1, -1, -1]  # first token: nothing compressed yet
    assert out[1].tolist() == [0, -1, -1]  # top-k longer than the visible entries
    assert sorted(out[2].tolist()) == [0, 1, 2]
    scores = (torch.relu(torch.einsum("hd,nd->hn", q[3], keys)) * w[3][:, None]).sum(0)
    assert set(out[3].tolist()) == set(scores.topk(3).indices.tolist())
