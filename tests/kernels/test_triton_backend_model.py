"""The whole tiny model on the `triton` attention backend matches the `torch` backend (interpreter
on CI, compiled on a GPU): same greedy tokens, prompt logprobs within a stated tolerance, for the
model-dtype and the fp8_ds_mla KV cache, through chunked prefill and batching."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SPEC = TinyModelSpec(naming="transformers")  # swa, csa (ratio 4), hca (ratio 8), csa
PROMPTS = [[(7 * i + 3 * j) % 400 + 20 for j in range(n)] for i, n in enumerate((37, 5, 20))]


def _run(path, backend, kv_cache_dtype):
    llm = LLM(path, dtype="float32", device=DEV, attention_backend=backend, kv_cache_dtype=kv_cache_dtype,
              block_size=16, max_model_len=128, max_num_batched_tokens=32, show_progress=False)
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
