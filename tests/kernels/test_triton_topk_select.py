"""The indexer's Triton top-k select against torch.topk: in Triton's CPU interpreter on CI, compiled on a GPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vllm.kernels import topk_select as ts  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NEG_INF = float("-inf")


def _case(t: int, n: int, candidates, seed: int, ties: bool = False):
    """Scores `[t, n]` (row i has candidates[i] finite scores, the rest -inf), entry slots of t // 2 + 1
    requests (queries share them), and each query's request."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(t, n, generator=g) * 4
    if ties:  # a handful of values: many entries tie at the k-th score
        scores = scores.round()
    scores = torch.where(torch.arange(n)[None, :] < torch.tensor(candidates)[:, None], scores, NEG_INF)
    b = t // 2 + 1
    entry = torch.randperm(b * n + 5, generator=g)[:b * n].view(b, n)
    req = torch.randint(0, b, (t,), generator=g)
    return scores.to(DEV), entry.to(DEV), req.to(DEV)


def _check(got, scores, k, entry, req):
    """Same shape as the reference; per row the same number of slots and the same multiset of scores (the
    entries may differ only among ties at the k-th score), distinct, in entry order, then -1s."""
    ref = ts.topk_slots_ref(scores, k, entry, req)
    assert got.shape == ref.shape and got.dtype == torch.long
    for i in range(scores.shape[0]):
        mine, theirs = got[i][got[i] >= 0], ref[i][ref[i] >= 0]
        assert mine.numel() == theirs.numel() == min(k, int((scores[i] > NEG_INF).sum()))
        assert (got[i][mine.numel():] == -1).all()
        where = {int(s): j for j, s in enumerate(entry[req[i]].tolist())}
        pos = [where[int(s)] for s in mine.tolist()]
        assert pos == sorted(set(pos)), "distinct entries, in entry order"
        assert sorted(scores[i, pos].tolist()) == sorted(scores[i, [where[int(s)] for s in theirs.tolist()]].tolist())


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("t,n,k,candidates", [
    (4, 40, 7, [40, 7, 3, 0]),          # more, exactly k, fewer than k, no candidate
    (3, 300, 300, [300, 120, 299]),     # k = the whole row
    (5, 1000, 64, [1000, 999, 65, 64, 1]),
], ids=["small", "k-is-row", "v4-like"])
def test_topk_slots_match_torch_topk(t, n, k, candidates, ties):
    scores, entry, req = _case(t, n, candidates, seed=n + t, ties=ties)
    _check(ts.topk_slots(scores, k, entry, req), scores, k, entry, req)


@pytest.mark.parametrize("block,stages", [(64, 4), (256, 2)])
def test_topk_slots_long_rows_go_through_stages(block, stages, monkeypatch):
    """A row longer than one block: each block's k winners form the next stage's row, until one block holds it."""
    launched = []
    kernel = ts._topk_stage_kernel
    monkeypatch.setattr(ts, "_topk_stage_kernel", type("Spy", (), {"__getitem__": lambda self, grid: (
        launched.append(grid), kernel[grid])[1]})())
    scores, entry, req = _case(3, 1000, [1000, 500, 21], seed=7, ties=True)
    _check(ts.topk_slots(scores, 20, entry, req, block=block), scores, 20, entry, req)
    assert len(launched) == stages and launched[-1] == (3, 1)


def test_topk_slots_every_score_equal_takes_the_first_entries():
    scores = torch.zeros(2, 50, device=DEV)
    entry = torch.arange(100, device=DEV).view(2, 50)
    got = ts.topk_slots(scores, 10, entry, torch.tensor([1, 0], device=DEV))
    assert got.tolist() == [list(range(50, 60)), list(range(10))]


def test_topk_slots_rejects_k_beyond_the_row():
    scores, entry, req = _case(1, 8, [8], seed=0)
    with pytest.raises(AssertionError, match="k=9 must be in 1..8"):
        ts.topk_slots(scores, 9, entry, req)
