"""The Hopper (Gluon) sparse MLA decode kernel against the torch reference: on an SM 9.x GPU only
(Gluon kernels do not run in Triton's interpreter); its sm90 compile is checked on any machine."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vllm.kernels import sparse_attn as sa, sparse_attn_sm90 as sm90  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(not (HOPPER and sm90.HAS_GLUON), reason="needs a Hopper GPU and Gluon")
D = 512

CASES = {  # name: (T, H, K window, K compressed, fraction invalid)
    "one-query-64-heads": (1, 64, 128, 512, 0.0),
    "varlen-batch": (6, 64, 128, 300, 0.3),
    "window-only": (5, 64, 128, 0, 0.2),
    "empty-window": (4, 64, 0, 200, 0.0),
    "all-invalid": (3, 64, 40, 12, 1.0),
    "topk-longer-than-entries": (4, 64, 128, 512, 0.8),
    "128-heads": (3, 128, 128, 100, 0.1),
    "tp-shard-16-heads": (3, 16, 64, 100, 0.1),
    "odd-lengths": (2, 64, 37, 91, 0.1),
}


def _case(name, dtype, seed=0):
    t, h, kw, kc, invalid = CASES[name]
    g = torch.Generator().manual_seed(seed)
    n = 700
    rows = (torch.randn(n, D, generator=g) * torch.logspace(-1, 0.5, n)[:, None]).to("cuda", dtype)
    comp = torch.randn(n // 2, D, generator=g).to("cuda", dtype)

    def idx(k, hi):
        i = torch.randint(0, hi, (t, k), generator=g)
        return torch.where(torch.rand(t, k, generator=g) < invalid, -1, i).to("cuda")

    sources = [(rows, idx(kw, n))]
    if kc:
        sources.append((comp, idx(kc, n // 2)))
    q = torch.randn(t, h, D, generator=g).to("cuda", dtype)
    sink = torch.randn(h, generator=g).to("cuda")
    return q, sources, sink


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("block_k,num_buf", [(64, 2), (32, 3), (32, 4)])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_sm90_matches_reference(case, splits, block_k, num_buf, dtype):
    q, sources, sink = _case(case, dtype)
    out = sm90.sparse_attn_sm90(q, sources, sink, D**-0.5, block_k=block_k, num_buf=num_buf, num_splits=splits)
    ref = sa.sparse_attn_ref(q, sources, sink, D**-0.5)
    assert_close(out, ref, 1e-2, case)
    if CASES[case][4] == 1.0:
        assert out.abs().max() == 0  # the sink takes all the mass


@needs_hopper
def test_sm90_first_token_sees_one_row():
    q, sources, sink = _case("one-query-64-heads", torch.bfloat16)
    sources = [(sources[0][0], torch.full_like(sources[0][1], -1))]
    sources[0][1][0, -1] = 7
    assert_close(sm90.sparse_attn_sm90(q, sources, sink, 0.05), sa.sparse_attn_ref(q, sources, sink, 0.05), 1e-2)


@needs_hopper
def test_sm90_several_queries_per_request_share_rows():
    """Speculative-decoding shape: consecutive queries of a request see growing windows of the same rows."""
    rows = torch.randn(200, D, device="cuda", dtype=torch.bfloat16)
    base = torch.arange(190, device="cuda")
    idx = torch.stack([torch.where(base <= 150 + i, base, -1) for i in range(4)])
    q = torch.randn(4, 64, D, device="cuda", dtype=torch.bfloat16)
    sink = torch.zeros(64, device="cuda")
    assert_close(sm90.sparse_attn_sm90(q, [(rows, idx)], sink, 0.05),
                 sa.sparse_attn_ref(q, [(rows, idx)], sink, 0.05), 1e-2)


def test_unsupported_reason_names_what_it_lacks():
    q = torch.zeros(1, 64, D, dtype=torch.bfloat16)
    rows = torch.zeros(4, D, dtype=torch.bfloat16)
    reason = sm90.unsupported_reason(q, [(rows, torch.zeros(1, 2, dtype=torch.long))])
    assert reason is not None and ("Hopper" in reason or "gluon" in reason)
