"""The batched engine end to end: continuous batching with chunked prefill and preemption gives
the same greedy tokens as running each prompt alone and as transformers; prefix caching, aborts,
fp8 KV cache and sizing errors."""

from __future__ import annotations

import random

import pytest
import torch

from vllm import LLM, SamplingParams
from vllm.config.cache import CacheConfig
from vllm.core.kv_cache.sizing import window_blocks
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec

SPEC = TinyModelSpec(naming="transformers")  # swa, csa (ratio 4), hca (ratio 8), csa
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
MAX_LEN, MAX_SEQS, MAX_BATCHED, BLOCK = 128, 4, 64, 16


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [rng.choice([3, 8, 17, 31, 40, 65, 90, 100]) for _ in range(n)]
    return [[rng.randrange(20, 500) for _ in range(k)] for k in lengths]


def _budget(llm_model, full_blocks: int) -> int:
    """Window reserve for the test's scheduler limits + `full_blocks` full-history blocks."""
    groups = llm_model.kv_cache_groups(CacheConfig(block_size=BLOCK))
    win = sum(window_blocks(g, MAX_SEQS, MAX_BATCHED) * g.block_bytes for g in groups if g.lookback)
    return win + full_blocks * sum(g.block_bytes for g in groups if g.lookback is None)


def _tokens(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def path(checkpoint_factory):
    return checkpoint_factory(SPEC)


@pytest.fixture(scope="module")
def alone(path):
    """Each prompt run by itself (no prefix cache, default scheduler limits)."""
    llm = LLM(path, dtype="float32", block_size=BLOCK, max_model_len=MAX_LEN, enable_prefix_caching=False,
              show_progress=False)
    return {tuple(p): _tokens(llm.generate({"prompt_token_ids": p}, GREEDY, use_tqdm=False))[0]
            for p in _prompts(36)}


def _tight_llm(path, **kw) -> LLM:
    probe = LLM(path, dtype="float32", block_size=BLOCK, max_model_len=MAX_LEN, max_num_seqs=MAX_SEQS,
                max_num_batched_tokens=MAX_BATCHED, show_progress=False)
    budget = _budget(probe.llm_engine.runner.model, full_blocks=12)  # 192 tokens: < 2 sequences of 100 + 10
    return LLM(path, dtype="float32", block_size=BLOCK, max_model_len=MAX_LEN, max_num_seqs=MAX_SEQS,
               max_num_batched_tokens=MAX_BATCHED, kv_cache_memory_bytes=budget, show_progress=False, **kw)


def test_batched_chunked_preempted_matches_alone_and_transformers(path, alone):
    transformers = pytest.importorskip("transformers")
    llm = _tight_llm(path)
    prompts = _prompts(36)
    got = _tokens(llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False))
    engine = llm.llm_engine
    assert engine.scheduler.num_preemptions > 0, "the budget was meant to force preemption"
    assert max(map(len, prompts)) > MAX_BATCHED, "some prompts must be prefilled in chunks"
    assert engine.kv_cache_manager.all_blocks_free()
    assert got == [alone[tuple(p)] for p in prompts]

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for p, toks in zip(prompts[:8], got[:8]):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(p):].tolist()
        assert toks == ref


def test_prefix_cache_hits_give_identical_outputs(path, alone):
    llm = _tight_llm(path)
    rng = random.Random(5)
    shared = [rng.randrange(20, 500) for _ in range(40)]
    prompts = [shared + [rng.randrange(20, 500) for _ in range(k)] for k in (3, 9, 20, 33)]
    first = _tokens(llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False))
    kv = llm.llm_engine.kv_cache_manager
    hits_first = kv.prefix_hits
    again = _tokens(llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False))
    assert kv.prefix_hits > hits_first > 0
    ref = LLM(path, dtype="float32", block_size=BLOCK, max_model_len=MAX_LEN, enable_prefix_caching=False,
              show_progress=False)
    expect = _tokens(ref.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False))
    assert first == expect and again == expect
    assert kv.all_blocks_free()


def test_aborts_mid_prefill_and_mid_decode_free_every_block(path):
    llm = _tight_llm(path)
    engine = llm.llm_engine
    prompts = _prompts(12, seed=3)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": p}, SamplingParams(temperature=0, max_tokens=20,
                                                                            ignore_eos=True))
    aborted_in = set()
    for _ in range(60):
        if not engine.has_unfinished_requests():
            break
        engine.step()
        for rid, reqs in list(engine.requests.items()):
            r = reqs[0]
            state = "prefill" if 0 < r.num_computed_tokens < len(r.prompt_token_ids) else \
                "decode" if r.output_token_ids else None
            if state and state not in aborted_in:
                engine.abort_request(rid)
                aborted_in.add(state)
    while engine.has_unfinished_requests():
        engine.step()
    assert aborted_in == {"prefill", "decode"}
    assert engine.kv_cache_manager.all_blocks_free()


def test_too_long_prompt_is_rejected_while_others_finish(path):
    llm = LLM(path, dtype="float32", block_size=BLOCK, max_model_len=64, max_num_seqs=2, show_progress=False)
    engine = llm.llm_engine
    engine.add_request("a", {"prompt_token_ids": [30] * 10}, GREEDY)
    engine.add_request("b", {"prompt_token_ids": [40] * 20}, GREEDY)
    engine.step()
    with pytest.raises(ValueError, match="longer than the maximum model length of 64"):
        engine.add_request("c", {"prompt_token_ids": [50] * 80}, GREEDY)
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert sorted(done) == ["a", "b"] and all(len(o.outputs[0].token_ids) == 10 for o in done.values())


def test_max_model_len_beyond_budget_fails_at_startup_naming_the_fit(path):
    probe = LLM(path, dtype="float32", block_size=BLOCK, max_model_len=MAX_LEN, max_num_seqs=MAX_SEQS,
                max_num_batched_tokens=MAX_BATCHED, show_progress=False)
    budget = _budget(probe.llm_engine.runner.model, full_blocks=5)
    kw = dict(dtype="float32", block_size=BLOCK, max_num_seqs=MAX_SEQS, max_num_batched_tokens=MAX_BATCHED,
              kv_cache_memory_bytes=budget, show_progress=False)
    with pytest.raises(ValueError, match=r"largest max_model_len that fits is 80"):
        LLM(path, max_model_len=MAX_LEN, **kw)
    llm = LLM(path, max_model_len=80, **kw)
    assert llm.llm_engine.kv_cache_plan.num_tokens == 80


def test_fp8_kv_cache_stays_close_to_auto(path, alone):
    """fp8_ds_mla latent rows (e4m3 NoPE with UE8M0 tile scales, bf16 RoPE): greedy tokens agree
    with the model-dtype cache on >= 80% of positions (first divergence ends the comparison of a
    sequence); measured agreement is printed."""
    llm = LLM(path, dtype="float32", block_size=BLOCK, max_model_len=MAX_LEN, kv_cache_dtype="fp8",
              show_progress=False)
    prompts = _prompts(36)[:12]
    got = _tokens(llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False))
    agree = total = 0
    for p, toks in zip(prompts, got):
        ref = alone[tuple(p)]
        for a, b in zip(toks, ref):
            total += 1
            if a != b:
                break
            agree += 1
    print(f"fp8 KV greedy agreement: {agree}/{total}")
    assert agree / total >= 0.8


def test_fp8_kv_cache_logits_close_to_auto(path):
    """Teacher-forced logits over 96 tokens: mean cosine >= 0.98 against the model-dtype cache
    (measured 0.992; single positions dip to ~0.87 where an indexer top-k choice flips)."""
    from tests.conftest import run_model
    from vllm.model_executor.model_loader import get_model

    model, _ = get_model(path, torch.float32, torch.device("cpu"), dequantize=False, show_progress=False)
    ids = torch.randint(20, 500, (96,), generator=torch.Generator().manual_seed(0))
    auto, fp8 = run_model(model, ids), run_model(model, ids, kv_cache_dtype="fp8")
    cos = torch.nn.functional.cosine_similarity(auto, fp8, dim=-1)
    assert cos.mean() >= 0.98 and cos.median() >= 0.995
    assert not torch.equal(auto, fp8)  # the fp8 path really quantizes


def test_one_request_failing_does_not_stop_the_others(path, alone, monkeypatch):
    """A sampling failure and non-finite logits each fail only their own request (finish_reason
    "error", message in RequestOutput.error); the batch-mates finish with their usual tokens."""
    llm = LLM(path, dtype="float32", block_size=BLOCK, max_model_len=MAX_LEN, max_num_seqs=MAX_SEQS,
              show_progress=False)
    runner = llm.llm_engine.runner
    real_sample, real_logits = runner.sampler.sample, runner.model.compute_logits

    def sample(logits, params, generator, banned=None):
        if params.seed == 13:
            raise RuntimeError("sampler exploded")
        return real_sample(logits, params, generator, banned)

    def compute_logits(hidden):  # poison the last row of each step that has >= 3 rows
        out = real_logits(hidden)
        if out.shape[0] >= 3:
            out[-1] = float("nan")
        return out

    prompts = _prompts(36)[:3]
    monkeypatch.setattr(runner.sampler, "sample", sample)
    bad = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, seed=13)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], [GREEDY, bad, GREEDY], use_tqdm=False)
    assert outs[1].outputs[0].finish_reason == "error" and "sampler exploded" in outs[1].error
    assert [outs[0].outputs[0].token_ids, outs[2].outputs[0].token_ids] == [alone[tuple(prompts[0])],
                                                                            alone[tuple(prompts[2])]]
    monkeypatch.setattr(runner.sampler, "sample", real_sample)
    monkeypatch.setattr(runner.model, "compute_logits", compute_logits)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    assert outs[2].outputs[0].finish_reason == "error" and "non-finite logits" in outs[2].error
    assert all(o.error is None and o.outputs[0].finish_reason == "length" for o in outs[:2])
    assert llm.llm_engine.kv_cache_manager.all_blocks_free()
