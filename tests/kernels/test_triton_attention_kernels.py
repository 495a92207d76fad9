"""Triton attention kernels against their torch references: in Triton's CPU interpreter on CI
(conftest sets TRITON_INTERPRET=1 without a GPU), compiled on a GPU. Fresh random inputs per case."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

from vllm.core.kv_cache.paged_rows import PagedRows  # noqa: E402
from vllm.core.kv_cache.specs import LayerTensorSpec  # noqa: E402
from vllm.kernels import compress_pool as cp  # noqa: E402
from vllm.kernels import fp8_ds_mla, indexer_topk as ix, sparse_attn as sa  # noqa: E402
from vllm.kernels._triton import OutOfResources, launch_first_fitting  # noqa: E402
from vllm.kernels.attn_splits import pick_splits  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TINY_FP8 = fp8_ds_mla.Fp8DsMlaLayout(nope=48, rope=16, tile=16, block_size=16)  # the tiny models' layout
V4_FP8 = fp8_ds_mla.Fp8DsMlaLayout(block_size=16)  # 448 + 64, tile 64


def _rows(n: int, d: int, layout, dtype=torch.float32, seed=0) -> tuple[object, torch.Tensor]:
    """A source of n rows (plain tensor or fp8_ds_mla pages) and the rows it stores, dequantized."""
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(n, d, generator=g) * torch.logspace(-1, 1, n, )[:, None]).to(DEV)
    if layout is None:
        return values.to(dtype), values.to(dtype).float()
    rows = PagedRows(LayerTensorSpec(0, "swa", layout.block_size, d, dtype, layout), -(-n // layout.block_size), DEV)
    rows.write(values, torch.arange(n, device=DEV))
    return rows, rows.gather(torch.arange(n, device=DEV))


def _indices(t: int, k: int, n: int, invalid: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (t, k), generator=g)
    return torch.where(torch.rand(t, k, generator=g) < invalid, -1, idx).to(DEV)


CASES = {  # name: (T, H, K window, K compressed, fraction invalid)
    "decode-one-query": (1, 16, 8, 24, 0.1),
    "varlen-batch": (6, 16, 8, 40, 0.3),
    "window-only": (5, 16, 8, 0, 0.2),
    "empty-window": (4, 16, 0, 33, 0.0),
    "all-invalid": (3, 16, 8, 12, 1.0),
    "topk-longer-than-entries": (4, 16, 8, 64, 0.8),
    "tp-shard-8-heads": (3, 8, 8, 20, 0.1),
    "64-heads": (2, 64, 8, 20, 0.1),
}


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16-rows", "fp8_ds_mla"])
@pytest.mark.parametrize("parts", [1, 2], ids=["whole-latent", "latent-halves"])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_sparse_attn_matches_reference(case, splits, parts, fp8):
    t, h, kw, kc, invalid = CASES[case]
    d, n = 64, 50
    layout = TINY_FP8 if fp8 else None
    swa, _ = _rows(n, d, layout, seed=1)
    comp, _ = _rows(n, d, None if layout is None else replace(layout, block_size=4), seed=2)  # as CSA pages
    sources = [(swa, _indices(t, kw, n, invalid, 3))]
    if kc:
        sources.append((comp, _indices(t, kc, n, invalid, 4)))
    if case == "decode-one-query":  # first token: one valid window row, nothing else
        sources[0][1][:] = -1
        sources[0][1][0, -1] = 7
    q = torch.randn(t, h, d, device=DEV)
    sink = torch.randn(h, device=DEV)
    out = sa.sparse_attn(q, sources, sink, d**-0.5, num_splits=splits, block_k=16, parts=parts)
    ref = sa.sparse_attn_ref(q, sources, sink, d**-0.5)
    assert_close(out, ref, 1e-5, case)  # tf32 dots on a GPU
    if invalid == 1.0:
        assert out.abs().max() == 0  # the sink takes all the mass


class _FitsOnlySmallTiles:
    """Stands in for the attention kernel on a GPU with little shared memory: launches whose row tile
    is wider than 16 or that pipeline raise Triton's OutOfResources, as on an SM12x part."""

    def __init__(self, kernel):
        self.kernel, self.tried = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.tried.append((kw["BLOCK_K"], kw["num_stages"]))
            if kw["BLOCK_K"] > 16 or kw["num_stages"] > 1:
                raise OutOfResources(kw["BLOCK_K"] * 4096, 101376, "shared memory")
            return self.kernel[grid](*args, **kw)
        return launch


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16-rows", "fp8_ds_mla"])
def test_sparse_attn_falls_back_to_a_configuration_that_fits(monkeypatch, fp8):
    t, h, d, n = 3, 16, 64, 50
    layout = TINY_FP8 if fp8 else None
    swa, _ = _rows(n, d, layout, seed=5)
    sources = [(swa, _indices(t, 24, n, 0.2, 6))]
    q = torch.randn(t, h, d, device=DEV)
    sink = torch.randn(h, device=DEV)
    fake = _FitsOnlySmallTiles(sa._sparse_attn_kernel)
    monkeypatch.setattr(sa, "_sparse_attn_kernel", fake)
    out = sa.sparse_attn(q, sources, sink, d**-0.5, block_k=64, num_stages=2)
    assert fake.tried == [(64, 2), (32, 2), (16, 2), (64, 1), (32, 1), (16, 1)]
    assert_close(out, sa.sparse_attn_ref(q, sources, sink, d**-0.5), 1e-5, "fallback")


def test_launch_first_fitting_names_what_it_tried():
    def never_fits(cfg):
        raise OutOfResources(300000, 101376, "shared memory")
    with pytest.raises(RuntimeError, match="no launch configuration fits this GPU.*num_stages"):
        launch_first_fitting(never_fits, [dict(num_stages=2), dict(num_stages=1)], "never-fits")


def test_launch_first_fitting_goes_straight_to_what_fitted_before():
    tried = []

    def one_stage_only(cfg):
        tried.append(cfg["num_stages"])
        if cfg["num_stages"] > 1:
            raise OutOfResources(200000, 101376, "shared memory")
        return cfg["num_stages"]
    for _ in range(2):
        assert launch_first_fitting(one_stage_only, (dict(num_stages=s) for s in (3, 2, 1)), "one-stage-only") == 1
    assert tried == [3, 2, 1, 1]


def test_smaller_configs_shrink_to_the_smallest_dot_tiles():
    cfgs = sa.smaller_configs(dict(block_h=64, block_k=64, num_warps=8, num_stages=2, parts=1))
    tiles = [(64, 64), (32, 64), (16, 64), (16, 32), (16, 16)]  # (rows, heads) per step
    assert [(c["block_k"], c["block_h"], c["num_stages"]) for c in cfgs] == \
        [(k, h, 2) for k, h in tiles] + [(k, h, 1) for k, h in tiles]


def test_sparse_attn_several_queries_per_request_share_rows():
    """Speculative-decoding shape: consecutive queries of a request see growing windows of the same rows."""
    d, h, n = 64, 16, 40
    rows, _ = _rows(n, d, None, seed=5)
    base = torch.arange(n - 4, device=DEV)
    idx = torch.stack([torch.where(base <= 30 + i, base, -1) for i in range(4)])  # [4 queries, K]
    q = torch.randn(4, h, d, device=DEV)
    sink = torch.zeros(h, device=DEV)
    assert_close(sa.sparse_attn(q, [(rows, idx)], sink, 0.1), sa.sparse_attn_ref(q, [(rows, idx)], sink, 0.1),
                 1e-5)


@pytest.mark.parametrize("programs,splits", [(128, 1), (132, 1), (64, 2), (32, 4), (8, 5), (1, 5)])
def test_pick_splits_runs_about_one_program_per_sm(programs, splits):
    """A 64-head program fills an SM's registers: split only up to ~one program per SM (H200 sweep),
    and never below two 64-row blocks per split of a 640-row list."""
    assert pick_splits(programs, 640, 64, 132) == splits
    assert programs * splits <= max(132, programs)


@pytest.mark.skipif(DEV.type != "cuda", reason="bf16 tl.dot is not exact in Triton's interpreter")
@pytest.mark.parametrize("h", [128, 64, 32, 16, 8])
def test_sparse_attn_bf16_v4_width(h):
    d, n, t = 512, 300, 9
    rows, _ = _rows(n, d, V4_FP8, seed=6)
    q = torch.randn(t, h, d, device=DEV, dtype=torch.bfloat16)
    sources = [(rows, _indices(t, 128, n, 0.1, 7)), (rows, _indices(t, 512, n, 0.5, 8))]
    sink = torch.randn(h, device=DEV)
    assert_close(sa.sparse_attn(q, sources, sink, d**-0.5), sa.sparse_attn_ref(q, sources, sink, d**-0.5), 1e-2)


@pytest.mark.parametrize("layout", [TINY_FP8, V4_FP8, fp8_ds_mla.fp8_key_layout(32, 16),
                                    fp8_ds_mla.fp8_key_layout(128, 16)],
                         ids=["tiny", "v4", "index-keys-tiny", "index-keys-v4"])
def test_fp8_insert_is_byte_identical_to_reference(layout):
    d = layout.nope + layout.rope
    n = 3 * layout.block_size
    kv = torch.randn(n, d) * torch.logspace(-6, 3, n)[:, None]  # scales across the whole range
    kv[1] = 0.0  # amax floor
    kv[2, :layout.nope] = 448.0 * 2.0**-3  # exact power-of-two ratio: the ceil must not round up
    slots = torch.randperm(4 * layout.block_size)[:n]
    slots[5] = -1
    want = torch.full((4, layout.page_bytes), 0xAB, dtype=torch.uint8)
    got = want.clone().to(DEV)
    fp8_ds_mla.insert_ref(want, kv, slots, layout)
    fp8_ds_mla.insert(got, kv.to(DEV), slots.to(DEV), layout)
    diff = (got.cpu() != want).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} bytes differ, first at (page, byte) {diff[0].tolist()}"


def _index_case(t, b, n, hi, di, seed, fp8=False):
    g = torch.Generator().manual_seed(seed)
    s_rows = b * n + 7
    keys = torch.randn(s_rows, di, generator=g).to(DEV)
    if fp8:  # paged FP8 keys (16-entry pages), written through the reference insert
        layout = fp8_ds_mla.fp8_key_layout(di, 16)
        paged = PagedRows(LayerTensorSpec(0, "index_keys", 16, di, torch.float32, layout), -(-s_rows // 16), DEV)
        paged.write(keys, torch.arange(s_rows, device=DEV))
        keys = paged
    entry = torch.randperm(s_rows, generator=g)[:b * n].view(b, n).to(DEV)
    req = torch.randint(0, b, (t,), generator=g).to(DEV)
    vis = torch.randint(0, n + 1, (t,), generator=g).to(DEV)
    vis[0] = 0  # first tokens see no entry
    q = torch.randn(t, hi, di, generator=g).to(DEV)
    w = torch.randn(t, hi, generator=g).to(DEV)
    return q, w, keys, entry, req, vis


@pytest.mark.parametrize("t,b,n,hi,di,topk", [(9, 3, 40, 8, 32, 5), (5, 2, 130, 16, 64, 128), (4, 1, 3, 8, 32, 10),
                                              (3, 2, 5000, 8, 16, 64)],
                         ids=["small", "topk-over-blocks", "topk-longer-than-entries", "select-in-stages"])
@pytest.mark.parametrize("fp8", [False, True], ids=["plain-keys", "fp8-keys"])
def test_indexer_topk_picks_the_reference_best(t, b, n, hi, di, topk, fp8, monkeypatch):
    monkeypatch.setattr(ix, "SCORE_ELEMENTS", 2 * n)  # several query chunks
    q, w, keys, entry, req, vis = _index_case(t, b, n, hi, di, seed=t, fp8=fp8)
    scale = di**-0.5
    ref_scores = ix.indexer_scores_ref(q, w, keys, entry, req, vis, scale)
    got = ix.indexer_scores(q, w, keys, entry, req, vis, scale)
    assert_close(got, ref_scores, 1e-5, "indexer scores")
    out = ix.indexer_topk(q, w, keys, entry, req, vis, topk, scale)
    ref = ix.indexer_topk_ref(q, w, keys, entry, req, vis, topk, scale)
    assert out.shape == ref.shape
    for i in range(t):  # same count; chosen entries as good as the reference's (ties may differ)
        mine, theirs = out[i][out[i] >= 0], ref[i][ref[i] >= 0]
        assert mine.numel() == theirs.numel() == min(topk, int(vis[i]))
        pos = {int(s): k for k, s in enumerate(entry[req[i]].tolist())}
        score = lambda slots: sorted(ref_scores[i, [pos[int(s)] for s in slots]].tolist())  # noqa: E731
        assert score(mine) == pytest.approx(score(theirs), rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("ratio,overlap", [(4, True), (8, False), (128, False)])
@pytest.mark.parametrize("dim,rope", [(48, 16), (512, 64)], ids=["tiny", "v4"])
def test_compress_entries_match_reference(ratio, overlap, dim, rope):
    """Pool (CSA: entry 0 without a previous window), RMSNorm, RoPE in one launch; HCA's 128
    candidates take several candidate steps at V4 width."""
    width = 2 * dim if overlap else dim
    e = 5
    state = torch.randn(4 * e * ratio, 2 * width, device=DEV) * 2
    perm = torch.randperm(state.shape[0], device=DEV)
    win = perm[:e * ratio].view(e, ratio)
    prev = perm[e * ratio:2 * e * ratio].view(e, ratio).clone() if overlap else None
    if overlap:
        prev[0] = -1  # entry 0 has no previous window
    weight = 1 + 0.1 * torch.randn(dim, device=DEV)
    ang = torch.rand(e, rope // 2, device=DEV) * 6
    out = cp.compress_entries(state, win, prev, weight, 1e-6, ang.cos(), ang.sin(), torch.float32)
    assert_close(out, cp.compress_entries_ref(state, win, prev, weight, 1e-6, ang.cos(), ang.sin(), torch.float32),
                 1e-5, "compressor entries")


@pytest.mark.parametrize("ratio,overlap", [(4, True), (128, False)])
def test_compress_entries_bf16(ratio, overlap):
    """bf16 models: each stage rounds as the reference does (integer RNE in the kernel)."""
    dim, rope, e = 512, 64, 16
    width = 2 * dim if overlap else dim
    state = torch.randn(2 * e * ratio, 2 * width, device=DEV)
    win = torch.randperm(state.shape[0], device=DEV)[:e * ratio].view(e, ratio)
    prev = torch.randperm(state.shape[0], device=DEV)[:e * ratio].view(e, ratio) if overlap else None
    weight = (1 + 0.1 * torch.randn(dim, device=DEV)).to(torch.bfloat16)
    ang = torch.rand(e, rope // 2, device=DEV) * 6
    out = cp.compress_entries(state, win, prev, weight, 1e-6, ang.cos(), ang.sin(), torch.bfloat16)
    ref = cp.compress_entries_ref(state, win, prev, weight, 1e-6, ang.cos(), ang.sin(), torch.bfloat16)
    assert_close(out, ref, 1e-2, "bf16 entries")
