"""The Triton RMSNorm against rms_norm_ref (the model's norms on the torch backend; transformers parity
in tests/models checks that it is the model's math). In Triton's CPU interpreter without a GPU.

fp32 rows match to rounding (the row sums add in another order); bf16 outputs round the same fp32
values to nearest even, so they differ from the reference only where a sum's last bit tips a rounding:
at most one bf16 ulp there, a relative error well under 1e-3 over a row."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vllm.kernels import rms_norm as rn  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "weightless"])
@pytest.mark.parametrize("shape", [(1, 4096), (7, 100), (3, 5, 64), (37, 512), (2, 7168)])
def test_matches_reference(shape, weighted, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g) * 3).to(DEV, dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], generator=g)).to(DEV, dtype) if weighted else None
    out = rn.rms_norm(x, w, 1e-6)
    ref = rn.rms_norm_ref(x, w, 1e-6)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert_close(out, ref, TOL[dtype], "rms_norm")
    ulp = (out.float() - ref.float()).abs() / ref.float().abs().clamp(min=1e-30)
    assert ulp.max() <= (2**-7 if dtype == torch.bfloat16 else 1e-5), "more than one bf16 ulp off"


def test_many_narrow_rows_share_programs():
    """Per-head norms: T x heads rows of one head's width, several rows a program."""
    x = torch.randn(33, 16, 64, generator=torch.Generator().manual_seed(3)).to(DEV, torch.bfloat16)
    assert rn.launch_config(33 * 16, 64)["block_t"] > 1
    assert_close(rn.rms_norm(x, None, 1e-6), rn.rms_norm_ref(x, None, 1e-6), TOL[torch.bfloat16])


def test_zero_rows_and_a_zero_row():
    x = torch.zeros(0, 48, device=DEV)
    assert rn.rms_norm(x, None, 1e-6).shape == (0, 48)
    z = torch.zeros(2, 48, device=DEV)  # eps keeps the zero row finite: zeros out
    assert torch.equal(rn.rms_norm(z, torch.ones(48, device=DEV), 1e-6), z)


def test_strided_rows():
    """Rows with a gap between them (a column slice): strides are honoured, the output is contiguous."""
    base = torch.randn(6, 96, generator=torch.Generator().manual_seed(4)).to(DEV)
    x = base[:, :80]
    assert_close(rn.rms_norm(x, None, 1e-5), rn.rms_norm_ref(x, None, 1e-5), TOL[torch.float32])


def test_bad_input_is_named():
    with pytest.raises(AssertionError, match="weight must be"):
        rn.rms_norm(torch.randn(2, 8, device=DEV), torch.ones(9, device=DEV), 1e-6)
    with pytest.raises(AssertionError, match="D must be in"):
        rn.rms_norm(torch.randn(1, rn.MAX_DIM + 1, device=DEV), None, 1e-6)
