"""The one-launch Triton MoE router against router_ref (the model runs router_ref on the torch backend;
transformers parity in tests/models checks it is the model's math).

Selections are compared exactly on tokens whose reference selection scores around the top-k
are either exact ties (the lower-index rule, reproduced by both) or apart by more than rounding;
the remaining tokens (near ties, may round either way) must be rare."""

from __future__ import annotations


import pytest
import torch

pytest.importorskip("triton")

from vllm.kernels import moe_router as mr  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SPLIT_D = dict(block_d=16, splits=3, sel_t=4)  # D splits summed by the last program, which selects 4 rows a pass


def _params(t, d, e, dtype=torch.float32, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, d, generator=g).to(DEV, dtype)
    w = (torch.randn(e, d, generator=g) / d**0.5).to(DEV, dtype)
    b = (torch.randn(e, generator=g) * 0.3 - 0.5).to(DEV) if bias else None  # selection scores of both signs
    return x, w, b


def _sel(x, w, b, score_func):
    s = mr._SCORE_FNS[score_func](x.float() @ w.float().T)
    return s if b is None else s + b


def _clear(scores, k, tol=1e-5):
    """Tokens whose k+1 best scores are pairwise tied exactly or apart by more than tol."""
    top = scores.sort(-1, descending=True).values[:, :k + 1]
    gaps = top[:, :-1] - top[:, 1:]
    return ~((gaps > 0) & (gaps <= tol)).any(1)


def _check(out, ref, clear, rel=1e-5):
    (w, ids), (w_ref, ids_ref) = out, ref
    assert ids.dtype == torch.int32 and w.dtype == torch.float32 and ids.shape == ids_ref.shape == w.shape
    assert clear.float().mean() >= 0.9, "too many near ties to test"
    assert torch.equal(ids[clear].cpu(), ids_ref[clear].cpu())
    assert_close(w[clear], w_ref[clear], rel, "routing weights")
    assert not any(c.any() for c in mr._COUNTERS.values()), "arrival counters must be left zero"


def _both(*args, launch=None, **kw):
    return mr.router(*args, **kw, **(launch or {})), mr.router_ref(*args, **kw)


@pytest.mark.parametrize("launch", [{}, SPLIT_D], ids=["default", "split-d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("t", [1, 37])
def test_v4_sqrtsoftplus_bias(t, dtype, launch):
    x, w, b = _params(t, 100, 24, dtype)  # D not a multiple of the block, E not a power of two
    out, ref = _both(x, w, b, None, None, top_k=6, score_func="sqrtsoftplus", renormalize=True, scaling=1.5,
                     launch=launch)
    _check(out, ref, _clear(_sel(x, w, b, "sqrtsoftplus"), 6), rel=1e-5 if dtype == torch.float32 else 1e-3)
    assert torch.allclose(out[0].sum(1), torch.full((t,), 1.5, device=DEV))


@pytest.mark.parametrize("score_func", ["sqrtsoftplus", "softmax"])
@pytest.mark.parametrize("idtype", [torch.int32, torch.int64])
def test_hash_routing(idtype, score_func):
    x, w, _ = _params(9, 64, 24, seed=1)
    g = torch.Generator().manual_seed(1)
    tid2eid = torch.stack([torch.randperm(24, generator=g)[:6] for _ in range(50)]).to(DEV, idtype)
    input_ids = torch.tensor([3, 17, 3, 0, 49, 8, 8, 3, 21], device=DEV, dtype=idtype)  # repeats
    out, ref = _both(x, w, None, tid2eid, input_ids, top_k=6, score_func=score_func, renormalize=True,
                     scaling=1.5, launch=SPLIT_D)
    assert torch.equal(ref[1], tid2eid[input_ids].int())  # table order
    _check(out, ref, torch.ones(9, dtype=torch.bool, device=DEV))
    assert torch.equal(out[1][0], out[1][2]) and torch.equal(out[1][0], out[1][7])  # same token, same experts
    one = _both(x[:1], w, None, tid2eid, input_ids[:1], top_k=6, score_func=score_func, renormalize=True,
                scaling=1.5)  # one token: the CUDA-core tiles
    _check(*one, torch.ones(1, dtype=torch.bool, device=DEV))


@pytest.mark.parametrize("t", [1, 37])
@pytest.mark.parametrize("launch", [{}, SPLIT_D], ids=["default", "split-d"])
def test_grouped_sigmoid_v3(launch, t):
    x, w, b = _params(t, 64, 32, seed=2)
    out, ref = _both(x, w, b, None, None, top_k=4, score_func="sigmoid", renormalize=True, scaling=2.5, n_group=4,
                     topk_group=2, launch=launch)
    sel = _sel(x, w, b, "sigmoid")
    group = sel.view(t, 4, 8).topk(2, -1).values.sum(-1)
    _check(out, ref, _clear(sel, 4) & _clear(group, 2))
    groups = (out[1].long() // 8).cpu()
    assert all(len(set(row.tolist())) <= 2 for row in groups)
    kept = group.sort(dim=-1, descending=True, stable=True).indices[:, :2].cpu()
    assert all(set(g.tolist()) <= set(k.tolist()) for g, k in zip(groups, kept))


@pytest.mark.parametrize("t", [1, 5])
def test_softmax_no_renormalize(t):
    x, w, _ = _params(t, 64, 24, seed=3, bias=False)
    out, ref = _both(x, w, None, None, None, top_k=3, score_func="softmax", renormalize=False, scaling=1.0)
    _check(out, ref, _clear(_sel(x, w, None, "softmax"), 3))
    probs = torch.softmax(x.float() @ w.float().T, -1)
    assert_close(out[0], probs.topk(3, -1).values, 1e-5)


def test_ties_lower_index_wins():
    """Duplicated expert rows on integer data tie exactly (exact logits): the lower index wins."""
    g = torch.Generator().manual_seed(4)
    t, d, e = 3, 32, 16
    x = torch.randint(0, 3, (t, d), generator=g).float()
    w = torch.randint(-2, 3, (e, d), generator=g).float()
    w[3] = w[7] = 2.0  # the two best, tied
    w[5] = w[12] = 1.0  # the next two, tied; top_k 3 must take 5 and drop 12
    x, w = x.to(DEV), w.to(DEV)
    for fn in (mr.router, mr.router_ref):
        _, ids = fn(x, w, None, None, None, top_k=3, score_func="sqrtsoftplus", renormalize=True, scaling=1.0)
        assert ids.tolist() == [[3, 7, 5]] * t, fn.__name__
    # groups of 4: groups 1 and 3 identical and best -> group 1 is kept
    w = torch.randint(-2, 1, (e, d), generator=g).float()
    w[4:8] = w[12:16] = torch.randint(1, 3, (4, d), generator=g).float()
    w = w.to(DEV)
    want = mr.router_ref(x, w, None, None, None, top_k=2, score_func="sqrtsoftplus", renormalize=True, scaling=1.0,
                         n_group=4, topk_group=1)[1]
    assert ((want >= 4) & (want < 8)).all()
    got = mr.router(x, w, None, None, None, top_k=2, score_func="sqrtsoftplus", renormalize=True, scaling=1.0,
                    n_group=4, topk_group=1)[1]
    assert torch.equal(got, want)


@pytest.mark.parametrize("top_k", [1, 2, 4, 5, 7, 8])
def test_any_top_k(top_k):
    """Top-k from one expert to several rounds past the V4 six (V3 takes eight)."""
    x, w, b = _params(9, 48, 40, seed=8)
    out, ref = _both(x, w, b, None, None, top_k=top_k, score_func="sqrtsoftplus", renormalize=True, scaling=1.5)
    _check(out, ref, _clear(_sel(x, w, b, "sqrtsoftplus"), top_k))


def test_top_k_equals_e():
    x, w, b = _params(4, 48, 24, seed=5)
    out, ref = _both(x, w, b, None, None, top_k=24, score_func="sqrtsoftplus", renormalize=True, scaling=1.5)
    _check(out, ref, _clear(_sel(x, w, b, "sqrtsoftplus"), 23))
    assert torch.equal(out[1].sort(1).values.cpu(), torch.arange(24, dtype=torch.int32).expand(4, -1))


def test_all_tokens_one_expert():
    x, w, b = _params(20, 48, 24, seed=6)
    b[5] = 1e4
    out, ref = _both(x, w, b, None, None, top_k=6, score_func="sqrtsoftplus", renormalize=True, scaling=1.5,
                     launch=dict(block_t=16))
    assert (out[1][:, 0] == 5).all()
    _check(out, ref, _clear(_sel(x, w, b, "sqrtsoftplus"), 6))


def test_replay_is_deterministic():
    x, w, b = _params(17, 64, 24, seed=7)
    kw = dict(top_k=6, score_func="sqrtsoftplus", renormalize=True, scaling=1.5, **SPLIT_D)
    first = mr.router(x, w, b, None, None, **kw)
    second = mr.router(x, w, b, None, None, **kw)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("launch", [{}, SPLIT_D], ids=["default", "split-d"])
@pytest.mark.parametrize("hash_layer", [False, True], ids=["topk", "hash"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("t", [1, 5])
def test_norm_router_matches_norm_then_router(t, dtype, hash_layer, launch):
    """The ffn norm and the router: fused in one launch at one token (every program normalizes the row
    itself, the first expert block stores it; split-d: several D chunks a program), the norm kernel then
    the router above."""
    x, w, b = _params(t, 100, 24, dtype, seed=13)
    x = x * 4 + 1  # off unit scale, so the norm matters
    g = torch.Generator().manual_seed(14)
    norm_w = (1 + 0.3 * torch.randn(100, generator=g)).to(DEV, dtype)
    if hash_layer:
        tid2eid = torch.rand(50, 24, generator=g).argsort(1)[:, :6].to(DEV)
        ids_in = torch.randint(0, 50, (t,), generator=g).to(DEV)
        args = (None, tid2eid, ids_in)
    else:
        args = (b, None, None)
    kw = dict(top_k=6, score_func="sqrtsoftplus", renormalize=True, scaling=1.5)
    normed, wts, ids = mr.norm_router(x, norm_w, 1e-6, w, *args, **kw, **launch)
    ref = mr.norm_router_ref(x, norm_w, 1e-6, w, *args, **kw)
    assert mr.launch_config(t, 24, 100, 4)["gemv"] == (t == 1)
    assert_close(normed, ref[0], 1e-5 if dtype == torch.float32 else 1e-3, "normed x")
    clear = _clear(_sel(ref[0], w, b, "sqrtsoftplus"), 6) if not hash_layer else torch.ones(t, dtype=torch.bool)
    _check((wts, ids), ref[1:], clear.to(DEV))


def test_zero_tokens():
    x, w, b = _params(0, 64, 8)
    kw = dict(top_k=2, score_func="sqrtsoftplus", renormalize=True, scaling=1.0)
    wts, ids = mr.router(x, w, b, None, None, **kw)
    normed, wts2, ids2 = mr.norm_router(x, torch.ones(64, device=DEV), 1e-6, w, b, None, None, **kw)
    assert wts.shape == ids.shape == wts2.shape == ids2.shape == (0, 2) and normed.shape == (0, 64)
