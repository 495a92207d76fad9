"""The whole tiny model on the `triton` backends (attention; MoE/GEMM: linears, router, MoE, RMSNorm, mHC)
matches the `torch` backends (interpreter on CI, compiled on a GPU): same greedy tokens, prompt
logprobs within a stated tolerance, for the model-dtype and the fp8_ds_mla KV cache, plain and
FP8/MXFP4 checkpoints, through chunked prefill and batching."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from tests.conftest import run_model  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.kernels.testing import assert_close  # noqa: E402
from vllm.model_executor.layers.backends.base import MoEGemmBackend  # noqa: E402
from vllm.model_executor.layers.backends.torch_backend import TorchMoEGemmBackend  # noqa: E402
from vllm.model_executor.layers.backends.triton_backend import TritonMoEGemmBackend  # noqa: E402
from vllm.model_executor.model_loader import get_model  # noqa: E402
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SPEC = TinyModelSpec(naming="transformers")  # swa, csa (ratio 4), hca (ratio 8), csa
QUANTIZED = TinyModelSpec(naming="hub", quantized=True, expert_dtype="fp4")  # FP8 linears, MXFP4 experts
PROMPTS = [[(7 * i + 3 * j) % 400 + 20 for j in range(n)] for i, n in enumerate((37, 5, 20))]


def _run(path, backend, kv_cache_dtype, moe_backend="torch", **kw):
    llm = LLM(path, dtype="float32", device=DEV, attention_backend=backend, moe_backend=moe_backend,
              kv_cache_dtype=kv_cache_dtype, block_size=16, **kw, max_model_len=128, max_num_batched_tokens=32, show_progress=False)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, prompt_logprobs=0, logprobs=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    tokens = [o.outputs[0].token_ids for o in outs]
    prompt_lps = torch.tensor([lp[p[i]].logprob for o, p in zip(outs, PROMPTS)
                               for i, lp in enumerate(o.prompt_logprobs) if lp is not None])
    return tokens, prompt_lps


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_triton_backend_matches_torch_backend(checkpoint_factory, kv_cache_dtype):
    path = checkpoint_factory(SPEC)
    want_tokens, want_lps = _run(path, "torch", kv_cache_dtype)
    got_tokens, got_lps = _run(path, "triton", kv_cache_dtype)
    assert got_tokens == want_tokens
    # fp32 model, fp32 (not tf32) dots in the kernels: only summation order differs
    assert (got_lps - want_lps).abs().max() <= 1e-4


class _Lockstep(MoEGemmBackend):
    """Runs every op on Triton and on the reference with the same inputs, checks them, goes on with
    Triton's result: each op is held to the reference inside the real model's data flow."""

    name = "lockstep"

    def __init__(self):
        super().__init__()
        self.triton, self.ref, self.checked = TritonMoEGemmBackend(), TorchMoEGemmBackend(), {}

    @classmethod
    def unsupported_reason(cls, device, weight_formats=frozenset()):
        return None

    def _both(self, op, *args, **kw):
        got, want = getattr(self.triton, op)(*args, **kw), getattr(self.ref, op)(*args, **kw)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            if g.dtype.is_floating_point:
                assert_close(g, w, 1e-5, op)
            else:
                assert torch.equal(g, w), op
        self.checked[op] = self.checked.get(op, 0) + 1
        return got

    def linear(self, *a, **kw):
        return self._both("linear", *a, **kw)

    def moe(self, *a, **kw):
        return self._both("moe", *a, **kw)

    def norm_router(self, *a, **kw):
        return self._both("norm_router", *a, **kw)

    def rms_norm(self, *a, **kw):
        return self._both("rms_norm", *a, **kw)

    def mhc_pre(self, *a, **kw):
        return self._both("mhc_pre", *a, **kw)

    def mhc_post(self, *a, **kw):
        return self._both("mhc_post", *a, **kw)

    def mhc_head(self, *a, **kw):
        return self._both("mhc_head", *a, **kw)


@pytest.mark.parametrize("quantized", [False, True], ids=["plain", "fp8-mxfp4"])
def test_triton_moe_gemm_ops_match_references_inside_the_model(checkpoint_factory, quantized):
    """Each Triton op (shared expert fused) against its reference on the model's own activations."""
    model, _ = get_model(checkpoint_factory(QUANTIZED if quantized else SPEC), torch.float32, DEV,
                         show_progress=False)
    lockstep = _Lockstep()
    run_model(model, torch.tensor(PROMPTS[0], device=DEV), [30, 1, 6], moe_gemm=lockstep)
    assert set(lockstep.checked) == {"linear", "moe", "norm_router", "rms_norm", "mhc_pre", "mhc_post",
                                     "mhc_head"}


@pytest.mark.parametrize("quantized", [False, True], ids=["plain", "fp8-mxfp4"])
def test_triton_moe_gemm_backend_matches_torch_backend(checkpoint_factory, quantized):
    """End to end through the engine: identical greedy tokens. Plain weights: prompt logprobs to
    1e-4 (fp32 sums in another order). FP8/MXFP4: an ulp of difference upstream can move an FP8
    activation to the next e4m3 value (a 2^-4 step) in a later layer, so logprobs get 0.25 — the
    lockstep test above holds each op to 1e-5 on identical inputs."""
    path = checkpoint_factory(QUANTIZED if quantized else SPEC)
    want_tokens, want_lps = _run(path, "torch", "auto")
    got_tokens, got_lps = _run(path, "torch", "auto", moe_backend="triton")
    assert got_tokens == want_tokens
    assert (got_lps - want_lps).abs().max() <= (0.25 if quantized else 1e-4)
