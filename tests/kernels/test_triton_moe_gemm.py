"""Quantized GEMM, FP8 activation quantization and fused MoE kernels against their torch
references (interpreter on CI, compiled on a GPU), plus the MoE/GEMM backend selector."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vllm.kernels import fused_moe as fm, moe_align as ma  # noqa: E402
from vllm.kernels.act_quant import act_quant_fp8, act_quant_fp8_ref  # noqa: E402
from vllm.kernels.quant_gemm import FP8_BLOCK, MXFP4, PLAIN, QuantWeight, linear, linear_ref  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402
from vllm.model_executor.layers.backends.selector import get_moe_gemm_backend  # noqa: E402
from vllm.model_executor.layers.quantization.formats import (  # noqa: E402
    quant_dequant_fp8_act,
    quant_fp8_block,
    quant_mxfp4,
)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# fp32 activations: exact products, fp32 sums -> only summation order differs. bf16 on a GPU: the
# output rounding to bf16 (and gate/up rounding inside the MoE) dominates.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weight(fmt: str, n: int, k: int, experts: int | None = None, dtype=torch.float32, seed=0) -> QuantWeight:
    g = _gen(seed)
    dense = [torch.randn(n, k, generator=g) * 0.1 * torch.logspace(-1, 1, k)[torch.randperm(k, generator=g)]
             for _ in range(experts or 1)]
    if fmt == PLAIN:
        w, s = torch.stack(dense).to(dtype), None
    else:
        qs = [(quant_fp8_block if fmt == FP8_BLOCK else quant_mxfp4)(d) for d in dense]
        w, s = torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])
    if experts is None:
        w, s = w[0], (None if s is None else s[0])
    return QuantWeight(w.to(DEV), None if s is None else s.to(DEV), fmt, act_fp8=fmt != PLAIN)


def _experts(fmt: str, e: int | None, d: int, i: int, dtype=torch.float32, seed=0) -> fm.ExpertWeights:
    return fm.ExpertWeights(_weight(fmt, i, d, e, dtype, seed), _weight(fmt, i, d, e, dtype, seed + 1),
                            _weight(fmt, d, i, e, dtype, seed + 2))


def test_act_quant_is_byte_identical_to_reference():
    x = (torch.randn(7, 300, generator=_gen(0)) * torch.logspace(-7, 3, 300)).to(DEV)
    x[2] = 0  # all-zero row: the amax floor sets the scale
    x[3, :128] = 448.0 * 2.0**-20 * (1 + 2.0**-23)  # one ulp over a power of two: scale rounds up
    q, s = act_quant_fp8(x)
    qr, sr = act_quant_fp8_ref(x)
    assert torch.equal(q.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(s, sr)
    deq = (q.float() * s.repeat_interleave(128, 1)[:, :300])
    assert torch.equal(deq, quant_dequant_fp8_act(x))


@pytest.mark.parametrize("fmt", [PLAIN, FP8_BLOCK, MXFP4])
@pytest.mark.parametrize("m,n,k", [(1, 96, 160), (3, 256, 384), (70, 64, 96), (130, 72, 64)])
def test_linear_matches_reference(fmt, m, n, k):
    """Decode (split-K) and prefill tilings, K and N not multiples of the tiles, partial FP8 blocks."""
    w = _weight(fmt, n, k, seed=m)
    x = torch.randn(m, k, generator=_gen(m)).to(DEV)
    assert_close(linear(x, w), linear_ref(x, w), TOL[torch.float32], f"{fmt} linear")


@pytest.mark.parametrize("fmt", [PLAIN, FP8_BLOCK, MXFP4])
def test_grouped_linear_matches_reference(fmt):
    """wo_a: block-diagonal over groups; with 32-row groups FP8 scale blocks straddle groups."""
    g, r, kg = 4, 32, 96
    w = _weight(fmt, g * r, kg)
    x = torch.randn(5, g, kg, generator=_gen(1)).to(DEV)
    out = linear(x, w, groups=g)
    assert out.shape == (5, g, r)
    assert_close(out, linear_ref(x, w, groups=g), TOL[torch.float32], f"{fmt} grouped")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tensor-core path: the interpreter's bf16 dot is inexact")
@pytest.mark.parametrize("fmt", [PLAIN, FP8_BLOCK, MXFP4])
def test_linear_bf16_on_gpu(fmt):
    w = _weight(fmt, 1024, 4096, dtype=torch.bfloat16)
    for m in (1, 33, 512):
        x = torch.randn(m, 4096, generator=_gen(m)).to(DEV, torch.bfloat16)
        assert_close(linear(x, w), linear_ref(x, w), TOL[torch.bfloat16], f"{fmt} bf16 m={m}")


def _check_alignment(al: ma.MoEAlignment, ids: torch.Tensor, num_experts: int, block_m: int) -> None:
    """Every pair exactly once, each block holds pairs of its own expert only, blocks of an expert
    contiguous and in expert order, unused blocks (-1) empty and last."""
    pairs, experts = al.sorted_pairs.view(-1, block_m).cpu(), al.block_expert.cpu()
    flat = ids.flatten().cpu()
    seen = []
    for b, e in enumerate(experts.tolist()):
        rows = [p for p in pairs[b].tolist() if p >= 0]
        if e < 0:
            assert not rows and (experts[b:] < 0).all()
            continue
        assert rows and all(flat[p] == e for p in rows)
        assert b == 0 or experts[b - 1] <= e
        seen += rows
    assert sorted(seen) == list(range(flat.numel()))


@pytest.mark.parametrize("align", [ma.moe_align, ma.moe_align_ref])
def test_moe_align_groups_pairs_by_expert(align):
    ids = torch.tensor([[3, 0], [3, 1], [3, 0], [2, 3]], device=DEV)
    _check_alignment(align(ids, num_experts=5, block_m=2), ids, 5, 2)  # expert 4 has no block


@pytest.mark.parametrize("shared", [False, True], ids=["routed", "with-shared"])
@pytest.mark.parametrize("case", ["many-chunks", "one-expert", "one-pair"])
def test_moe_align_kernel_layout_matches_reference(case, shared):
    """Several 1024-pair chunks, every pair on one expert (others empty), a single pair: the same
    block layout as the reference, the same pairs per expert and rows per block (which of an
    expert's blocks a pair lands in is arbitrary). With the shared expert: its pairs (slot k of
    every token, expert e) made in the kernels, as if the column were in topk_ids."""
    g = _gen(3)
    e, bm = 257, 16
    ids = {"many-chunks": torch.randint(0, e, (700, 7), generator=g), "one-expert": torch.full((300, 1), 5),
           "one-pair": torch.tensor([[e - 1]])}[case].to(DEV, torch.int32)
    al, ref = ma.moe_align(ids, e, bm, shared), ma.moe_align_ref(ids, e, bm, shared)
    _check_alignment(al, ma.with_shared(ids, e) if shared else ids, e + shared, bm)
    assert torch.equal(al.block_expert, ref.block_expert)
    rows, rows_ref = al.sorted_pairs.view(-1, bm), ref.sorted_pairs.view(-1, bm)
    assert torch.equal((rows >= 0).sum(1), (rows_ref >= 0).sum(1))


def _route(t: int, e: int, k: int, seed: int, one_expert: bool = False):
    g = _gen(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
    if one_expert:
        ids[:, 0] = e - 1  # every token picks the last expert
    return torch.rand(t, k, generator=g).to(DEV), ids.to(DEV, torch.int32)


CASES = {  # name: (tokens, experts, top_k, hidden, intermediate)
    "one-token": (1, 8, 2, 64, 96),
    "few-tokens": (12, 16, 2, 96, 160),  # decode tiling, K not a multiple of the K tile
    "odd-sizes": (37, 6, 3, 96, 64),
    "many-tokens": (150, 4, 2, 64, 64),  # prefill tiling (64-row expert blocks)
}


@pytest.mark.parametrize("routed_fmt,shared_fmt", [(PLAIN, PLAIN), (MXFP4, FP8_BLOCK), (FP8_BLOCK, FP8_BLOCK),
                                                   (MXFP4, None)])
@pytest.mark.parametrize("case,stream", [(c, s) for s in (True, False) for c in CASES
                                         if not (s and c == "many-tokens")],
                         ids=lambda v: v if isinstance(v, str) else "cuda-cores" if v else "tensor-cores")
def test_fused_moe_matches_reference(routed_fmt, shared_fmt, case, stream):
    """Shared expert fused as an extra expert, in its own format (V4: FP8 shared, MXFP4 routed); both
    GEMM forms (the streaming one at decode sizes: hundreds of one-row blocks crawl in the interpreter)."""
    t, e, k, d, i = CASES[case]
    x = torch.randn(t, d, generator=_gen(t)).to(DEV)
    w, ids = _route(t, e, k, seed=t)
    routed = _experts(routed_fmt, e, d, i)
    shared = _experts(shared_fmt, None, d, i, seed=7) if shared_fmt else None
    out = fm.fused_moe(x, w, ids, routed, 10.0, shared, stream=stream)
    assert_close(out, fm.fused_moe_ref(x, w, ids, routed, 10.0, shared), TOL[torch.float32], case)


def test_streaming_form_with_the_shared_expert_fused():
    """The streaming form reads each one-row block's expert from topk_ids itself (no alignment), the
    shared expert as every token's slot k: forced fused at several tokens (by default it runs beside)."""
    t, e, k, d, i = 5, 8, 3, 64, 96
    x = torch.randn(t, d, generator=_gen(9)).to(DEV)
    w, ids = _route(t, e, k, seed=9)
    routed, shared = _experts(MXFP4, e, d, i), _experts(FP8_BLOCK, None, d, i, seed=2)
    out = fm.fused_moe(x, w, ids, routed, 10.0, shared, stream=True, fuse_shared=True)
    assert_close(out, fm.fused_moe_ref(x, w, ids, routed, 10.0, shared), TOL[torch.float32], "stream, fused shared")


def test_fused_moe_corner_cases():
    """All tokens on one expert (others empty), swiglu clamp active, zero tokens."""
    d, i, e = 64, 64, 8
    routed, shared = _experts(MXFP4, e, d, i), _experts(FP8_BLOCK, None, d, i, seed=3)
    x = torch.randn(9, d, generator=_gen(5)).to(DEV) * 30  # large gate/up values hit the clamp at 10
    w, ids = _route(9, e, 1, seed=5, one_expert=True)
    assert_close(fm.fused_moe(x, w, ids, routed, 10.0, shared), fm.fused_moe_ref(x, w, ids, routed, 10.0, shared),
                 TOL[torch.float32], "one expert")
    empty = fm.fused_moe(x[:0], w[:0], ids[:0], routed, 10.0, shared)
    assert empty.shape == (0, d)


HOPPER_SMEM, SM120_SMEM = 232448, 101376  # opt-in shared memory a program may use


@pytest.mark.parametrize("tokens,pairs", [(100, 700), (10000, 70000)], ids=["few-rows", "many-rows"])
@pytest.mark.parametrize("a_bytes,w_bytes,hopper_stages", [(1, 1, None), (2, 2, 2), (4, 4, 2)],
                         ids=["fp8-act-fp8-weights", "bf16", "fp32"])
def test_moe_pipelining_depth_fits_the_device(tokens, pairs, a_bytes, w_bytes, hopper_stages):
    """Quantized V4 experts keep the tuned stages on Hopper; bf16 weights at 3 stages overflowed it
    (240 KB on an H200); every tensor-core config's tiles fit a 99 KB SM12x program or run one stage."""
    fp32 = a_bytes == 4
    tuned = fm._moe_config(tokens, pairs, 257, fp32, a_bytes, w_bytes, 1 << 30)
    hopper = fm._moe_config(tokens, pairs, 257, fp32, a_bytes, w_bytes, HOPPER_SMEM)
    assert not tuned.stream and hopper[:4] == tuned[:4] and hopper.stages == (hopper_stages or tuned.stages)
    bm, bn, bk, _, stages, _ = fm._moe_config(tokens, pairs, 257, fp32, a_bytes, w_bytes, SM120_SMEM)
    assert stages == 1 or stages * (bm * bk * a_bytes + 4 * bn * bk * w_bytes) + fm.SMEM_MARGIN <= SM120_SMEM


def test_decode_sizes_take_the_streaming_gemm():
    """Up to STREAM_MAX_TOKENS tokens the CUDA-core form with one-row expert blocks, beyond the tensor cores."""
    for t in (1, fm.STREAM_MAX_TOKENS):
        tiling = fm._moe_config(t, 7 * t, 257, False, 1, 0.5, HOPPER_SMEM)
        assert tiling.stream and tiling.bm == 1
    big = fm.STREAM_MAX_TOKENS + 1
    assert not fm._moe_config(big, 7 * big, 257, False, 1, 0.5, HOPPER_SMEM).stream


def test_fused_and_unfused_shared_expert_agree():
    """The fused shared expert (extra expert id) equals running it as its own linears."""
    t, e, k, d, i = 11, 6, 2, 64, 96
    x = torch.randn(t, d, generator=_gen(2)).to(DEV)
    w, ids = _route(t, e, k, seed=2)
    routed, shared = _experts(MXFP4, e, d, i), _experts(FP8_BLOCK, None, d, i, seed=4)
    fused = get_moe_gemm_backend(DEV, "triton", fuse_shared_experts=True).moe(x, w, ids, routed, shared, 10.0)
    unfused = get_moe_gemm_backend(DEV, "triton", fuse_shared_experts=False).moe(x, w, ids, routed, shared, 10.0)
    assert_close(fused, unfused, TOL[torch.float32], "fused vs unfused shared expert")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tensor-core path needs a GPU")
@pytest.mark.parametrize("t,d", [(1, 1024), (5, 1056), (64, 1024), (65, 1056), (200, 1024)])
def test_fused_moe_bf16_v4_shapes_on_gpu(t, d):
    """Streaming (t <= 64) and tensor-core (16- and 64-row blocks) GEMMs; d = 1056 leaves a partial K tile
    (and a partial FP8 block)."""
    e, k, i = 32, 6, 512
    x = torch.randn(t, d, generator=_gen(0)).to(DEV, torch.bfloat16)
    w, ids = _route(t, e, k, seed=0)
    routed, shared = _experts(MXFP4, e, d, i, torch.bfloat16), _experts(FP8_BLOCK, None, d, i, torch.bfloat16, 9)
    assert_close(fm.fused_moe(x, w, ids, routed, 10.0, shared), fm.fused_moe_ref(x, w, ids, routed, 10.0, shared),
                 TOL[torch.bfloat16], "bf16 moe")


def test_selector_picks_and_explains():
    assert get_moe_gemm_backend(torch.device("cpu")).name == "torch"  # CPU priority: the references
    with pytest.raises(ValueError, match="valid: \\['torch', 'triton'\\]"):
        get_moe_gemm_backend(torch.device("cpu"), "cutlass")
    if torch.cuda.is_available():
        assert get_moe_gemm_backend(torch.device("cuda"), weight_formats=frozenset({FP8_BLOCK})).name == "triton"
