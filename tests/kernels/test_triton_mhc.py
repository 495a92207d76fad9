"""mHC kernels (pre / post / head) against their torch references (which the model runs on the
torch backend; transformers parity in tests/models checks them): in Triton's CPU interpreter without a GPU (conftest sets TRITON_INTERPRET=1),
compiled on a GPU. Fresh random inputs and parameters per case.

Tolerances (‖a−r‖/‖r‖): fp32 streams run true-fp32 dots, 1e-5 everywhere. bf16 streams on a GPU
run bf16 dots against fn split hi + lo (mixes ~1e-6 off) or, in one case, tf32 dots (~1e-3 off),
so post/comb get 5e-3 and the bf16 outputs 1e-2 (one bf16 ulp is 4e-3); the interpreter computes
the dots in fp32 (and the kernels round bf16 outputs to nearest even there by hand, as torch
does), so on the CPU bf16 gets 1e-5 / 1e-3.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vllm.kernels import mhc  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: (1e-5, 1e-5),  # (fp32 outputs, stream-dtype outputs)
       torch.bfloat16: (5e-3, 1e-2) if DEV.type == "cuda" else (1e-5, 1e-3)}

# (T, hc, D, dtype, Sinkhorn iters, hc_eps, launch overrides); D not a power of two where it matters
CASES = {
    "decode-fp32": (1, 4, 96, torch.float32, 20, 1e-6, {}),
    "decode-bf16-split3": (1, 4, 96, torch.bfloat16, 20, 1e-6, dict(num_splits=3, block_k=32)),
    "batch3-fp32-split5": (3, 4, 32, torch.float32, 20, 1e-2, dict(num_splits=5, block_k=16, apply_block_d=16)),
    "batch17-bf16": (17, 4, 32, torch.bfloat16, 20, 1e-6, dict(block_k=32)),
    "batch17-bf16-tf32-dots": (17, 4, 96, torch.bfloat16, 20, 1e-6, dict(split_bf16=False, num_splits=2)),
    "batch17-fp32-one-iter": (17, 4, 96, torch.float32, 1, 1e-6, dict(num_splits=2, apply_warps=4, apply_block_d=32)),
    "hc2-fp32": (3, 2, 96, torch.float32, 20, 1e-6, dict(num_splits=4, block_k=16)),
    "hc2-bf16": (17, 2, 32, torch.bfloat16, 3, 1e-2, {}),
    "hc3-fp32-padded": (3, 3, 32, torch.float32, 20, 1e-6, dict(num_splits=2, block_k=32)),
}


def _streams(t, hc, d, dtype, g):
    return (torch.randn(t, hc, d, generator=g) * torch.rand(t, 1, 1, generator=g) * 3).to(DEV, dtype)


def _params(rows, hc, d, n_scale, g):
    """Weights of realistic magnitude: fn ~ 0.02 N(0, 1) per input, base ~ N(0, 1), scale in [0.5, 2]."""
    fn = (torch.randn(rows, hc * d, generator=g) * 0.02 * (16384 / (hc * d)) ** 0.5).to(DEV)
    base = torch.randn(rows, generator=g).to(DEV)
    scale = (0.5 + 1.5 * torch.rand(n_scale, generator=g)).to(DEV)
    return fn, base, scale


@pytest.mark.parametrize("case", list(CASES))
def test_pre_matches_reference(case):
    t, hc, d, dtype, iters, hc_eps, launch = CASES[case]
    g = torch.Generator().manual_seed(list(CASES).index(case) * 10)
    streams = _streams(t, hc, d, dtype, g)
    fn, base, scale = _params((2 + hc) * hc, hc, d, 3, g)
    x, post, comb = mhc.mhc_pre(streams, fn, base, scale, iters, hc_eps, 1e-6, **launch)
    rx, rpost, rcomb = mhc.mhc_pre_ref(streams, fn, base, scale, iters, hc_eps, 1e-6)
    tol32, tol = TOL[dtype]
    assert x.dtype == dtype and post.dtype == comb.dtype == torch.float32
    assert_close(post, rpost, tol32, f"{case} post")
    assert_close(comb, rcomb, tol32, f"{case} comb")
    assert_close(x, rx, tol, f"{case} x")


@pytest.mark.parametrize("case", list(CASES))
def test_head_matches_reference(case):
    t, hc, d, dtype, _, hc_eps, launch = CASES[case]
    g = torch.Generator().manual_seed(list(CASES).index(case) * 10 + 1)
    streams = _streams(t, hc, d, dtype, g)
    fn, base, scale = _params(hc, hc, d, 1, g)
    out = mhc.mhc_head(streams, fn, base, scale, hc_eps, 1e-6, **launch)
    assert out.dtype == dtype
    assert_close(out, mhc.mhc_head_ref(streams, fn, base, scale, hc_eps, 1e-6), TOL[dtype][1], f"{case} head")


@pytest.mark.parametrize("case", list(CASES))
def test_post_matches_reference(case):
    t, hc, d, dtype = CASES[case][:4]
    g = torch.Generator().manual_seed(list(CASES).index(case) * 10 + 2)
    residual = _streams(t, hc, d, dtype, g)
    y = torch.randn(t, d, generator=g).to(DEV, dtype)
    post = (2 * torch.rand(t, hc, generator=g)).to(DEV)
    comb = torch.softmax(torch.randn(t, hc, hc, generator=g), -1).to(DEV)
    block_d = 16 if t == 3 else None  # several D blocks with a ragged last one
    out = mhc.mhc_post(y, residual, post, comb, block_d=block_d)
    assert out.dtype == dtype
    assert_close(out, mhc.mhc_post_ref(y, residual, post, comb), TOL[dtype][1], f"{case} post")


def test_empty_batch():
    fn, base, scale = _params(24, 4, 32, 3, torch.Generator().manual_seed(0))
    streams = torch.empty(0, 4, 32, device=DEV)
    x, post, comb = mhc.mhc_pre(streams, fn, base, scale, 20, 1e-6, 1e-6)
    assert x.shape == (0, 32) and post.shape == (0, 4) and comb.shape == (0, 4, 4)
    assert mhc.mhc_post(x, streams, post, comb).shape == (0, 4, 32)


def test_launchers_reject_bad_layouts():
    g = torch.Generator().manual_seed(0)
    streams = _streams(2, 4, 32, torch.float32, g)
    fn, base, scale = _params(24, 4, 32, 3, g)
    with pytest.raises(AssertionError, match="contiguous"):
        mhc.mhc_pre(streams.transpose(0, 1), fn, base, scale, 20, 1e-6, 1e-6)
    with pytest.raises(AssertionError, match="fn must be"):
        mhc.mhc_pre(streams, fn[:, :64].contiguous(), base, scale, 20, 1e-6, 1e-6)
    with pytest.raises(AssertionError, match="fp32"):
        mhc.mhc_head(streams, fn[:4].contiguous().half(), base[:4].contiguous(), scale[:1].contiguous(), 1e-6, 1e-6)
    with pytest.raises(AssertionError, match="y is"):
        mhc.mhc_post(streams[:, 0].contiguous().bfloat16(), streams, fn.new_ones(2, 4), fn.new_ones(2, 4, 4))


def test_reference_comb_is_doubly_stochastic():
    g = torch.Generator().manual_seed(3)
    streams = _streams(64, 4, 64, torch.float32, g)
    fn, base, scale = _params(24, 4, 64, 3, g)
    _, post, comb = mhc.mhc_pre_ref(streams, fn, base, scale, 20, 1e-6, 1e-6)
    assert (comb > 0).all() and ((post > 0) & (post < 2)).all()
    torch.testing.assert_close(comb.sum(-2), torch.ones(64, 4, device=DEV), atol=1e-4, rtol=0)  # columns
    torch.testing.assert_close(comb.sum(-1), torch.ones(64, 4, device=DEV), atol=1e-2, rtol=0)  # rows
