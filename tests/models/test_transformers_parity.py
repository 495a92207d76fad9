"""Our DeepSeek V4 against transformers' DeepseekV4ForCausalLM on the same random tiny weights (fp32)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import SCHEDULES, max_rel_err, run_model
from vllm import LLM, SamplingParams
from vllm.model_executor.model_loader import get_model

transformers = pytest.importorskip("transformers")


def _hf(path: str) -> "transformers.PreTrainedModel":
    return transformers.DeepseekV4ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _prompt(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 500, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_full_sequence_logits_match(name, checkpoint_factory):
    spec = SCHEDULES[name]
    path = checkpoint_factory(spec)
    model, cfg = get_model(path, torch.float32, show_progress=False)
    t = 64
    # The test is only meaningful if windows complete and the indexer really discards entries.
    assert t > cfg.sliding_window and t // spec.csa_ratio > cfg.index_topk and t // spec.hca_ratio >= 2
    ids = _prompt(t)
    with torch.no_grad():
        ref = _hf(path)(ids[None]).logits[0]
    assert max_rel_err(run_model(model, ids), ref) <= 1e-4


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_chunked_and_token_by_token_match_full(name, checkpoint_factory):
    """Decode state (window, compressor carry-over, entries, indexer keys) carried exactly."""
    model, _ = get_model(checkpoint_factory(SCHEDULES[name]), torch.float32, show_progress=False)
    ids = _prompt(45, seed=3)
    full = run_model(model, ids)
    assert max_rel_err(run_model(model, ids, [7, 1, 13, 3, 21]), full) <= 1e-5
    assert max_rel_err(run_model(model, ids, [1] * 45), full) <= 1e-5


@pytest.mark.parametrize("prompt_len", [5, 8, 21])
def test_greedy_generate_matches_transformers(prompt_len, checkpoint_factory):
    """Prompts shorter than, equal to and longer than the window (8), crossing compression boundaries."""
    path = checkpoint_factory(SCHEDULES["swa-csa-hca-csa"])
    ids = _prompt(prompt_len, seed=prompt_len).tolist()
    llm = LLM(path, dtype="float32", show_progress=False)
    out = llm.generate({"prompt_token_ids": ids},
                       SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=0), use_tqdm=False)[0]
    hf = _hf(path)
    g = hf.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                    output_logits=True, return_dict_in_generate=True)
    hf_tokens = g.sequences[0, prompt_len:].tolist()
    assert out.outputs[0].token_ids == hf_tokens
    hf_lp = [torch.log_softmax(step[0].float(), -1)[tok].item() for step, tok in zip(g.logits, hf_tokens)]
    ours_lp = [lp[tok].logprob for lp, tok in zip(out.outputs[0].logprobs, hf_tokens)]
    assert max(abs(a - b) for a, b in zip(ours_lp, hf_lp)) <= 1e-3
