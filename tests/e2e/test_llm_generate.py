"""LLM.generate behaviour: sampling params, stops, logprobs, n, seeds, token-id prompts, errors."""

from __future__ import annotations

import pytest

from vllm import LLM, SamplingParams
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec


@pytest.fixture(scope="module")
def llm(checkpoint_factory):
    return LLM(checkpoint_factory(TinyModelSpec(naming="hub")), dtype="float32", show_progress=False)


def _gen(llm, prompt, **kw):
    return llm.generate(prompt, SamplingParams(**kw), use_tqdm=False)


def test_outputs_in_input_order_and_shape(llm):
    outs = _gen(llm, ["Hello world", "The quick brown fox", {"prompt_token_ids": [20, 21, 22]}],
                temperature=0, max_tokens=6)
    assert [o.prompt for o in outs] == ["Hello world", "The quick brown fox", None]
    assert outs[2].prompt_token_ids == [20, 21, 22]
    for o in outs:
        c = o.outputs[0]
        assert o.finished and len(c.token_ids) == 6 and c.finish_reason == "length" and isinstance(c.text, str)


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(llm):
    a = _gen(llm, "Hello", temperature=0, max_tokens=8)[0].outputs[0].token_ids
    assert _gen(llm, "Hello", temperature=0, max_tokens=8)[0].outputs[0].token_ids == a
    s1 = _gen(llm, "Hello", temperature=1.0, seed=123, max_tokens=8)[0].outputs[0].token_ids
    s2 = _gen(llm, "Hello", temperature=1.0, seed=123, max_tokens=8)[0].outputs[0].token_ids
    s3 = _gen(llm, "Hello", temperature=1.0, seed=7, max_tokens=8)[0].outputs[0].token_ids
    assert s1 == s2 and s1 != s3


def test_n_completions(llm):
    out = _gen(llm, "Hello", n=3, temperature=1.0, seed=5, max_tokens=6)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_logprobs_shape_and_ranks(llm):
    c = _gen(llm, "Hello", temperature=0, max_tokens=4, logprobs=3)[0].outputs[0]
    assert len(c.logprobs) == 4
    for tok, lp in zip(c.token_ids, c.logprobs):
        assert lp[tok].rank == 1 and len(lp) == 3  # greedy token is the top-1
        assert all(isinstance(v.decoded_token, str) for v in lp.values())
        assert sorted(v.rank for v in lp.values()) == [1, 2, 3]
    assert c.cumulative_logprob == pytest.approx(sum(lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)))


def test_prompt_logprobs(llm):
    out = _gen(llm, {"prompt_token_ids": [30, 31, 32, 33]}, temperature=0, max_tokens=1, prompt_logprobs=2)[0]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == 4
    for tok, d in zip([31, 32, 33], out.prompt_logprobs[1:]):
        assert tok in d and d[tok].logprob <= 0 and len(d) <= 3


def test_stop_token_ids_and_stop_strings(llm):
    ref = _gen(llm, "Hello", temperature=0, max_tokens=12)[0].outputs[0]
    stop_id = ref.token_ids[3]
    c = _gen(llm, "Hello", temperature=0, max_tokens=12, stop_token_ids=[stop_id])[0].outputs[0]
    assert c.token_ids == ref.token_ids[: ref.token_ids.index(stop_id) + 1]
    assert c.finish_reason == "stop" and c.stop_reason == stop_id
    stop = ref.text[5:8]
    c = _gen(llm, "Hello", temperature=0, max_tokens=12, stop=[stop])[0].outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == stop and c.text == ref.text[: ref.text.find(stop)]


def test_ignore_eos_and_min_tokens(llm):
    eos = llm.get_tokenizer().eos_token_id
    c = _gen(llm, "Hello", temperature=0, max_tokens=10, min_tokens=10, stop_token_ids=[eos])[0].outputs[0]
    assert len(c.token_ids) == 10 and eos not in c.token_ids


def test_skip_tokenizer_init(checkpoint_factory):
    llm = LLM(checkpoint_factory(TinyModelSpec(naming="hub")), dtype="float32", skip_tokenizer_init=True,
              show_progress=False)
    out = llm.generate({"prompt_token_ids": [3, 4, 5]}, SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3 and out[0].outputs[0].text == ""
    with pytest.raises(ValueError, match="prompt_token_ids"):
        llm.generate("text", SamplingParams(max_tokens=1), use_tqdm=False)


@pytest.mark.parametrize("kw,match", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"), ({"min_p": 2}, "min_p"), ({"n": 0}, "n "), ({"max_tokens": 0}, "max_tokens"),
    ({"logprobs": -1}, "logprobs"), ({"stop": [""]}, "stop"), ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
])
def test_bad_sampling_params(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kw)


def test_bad_prompts_fail_clearly_and_engine_keeps_working(llm):
    with pytest.raises(ValueError, match="out of vocabulary"):
        _gen(llm, [{"prompt_token_ids": [1, 999999]}], max_tokens=2)
    with pytest.raises(ValueError, match="maximum model length"):
        _gen(llm, {"prompt_token_ids": [5] * 5000}, max_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        _gen(llm, {"prompt_token_ids": []}, max_tokens=2)
    assert not llm.llm_engine.has_unfinished_requests() and llm.llm_engine.kv_cache_manager.all_blocks_free()
    assert len(_gen(llm, "Hello", temperature=0, max_tokens=2)[0].outputs[0].token_ids) == 2


def test_top_k_one_equals_greedy(llm):
    g = _gen(llm, "Hello", temperature=0, max_tokens=6)[0].outputs[0].token_ids
    assert _gen(llm, "Hello", temperature=0.8, top_k=1, seed=3, max_tokens=6)[0].outputs[0].token_ids == g
    assert _gen(llm, "Hello", temperature=0.8, top_p=1e-6, seed=3, max_tokens=6)[0].outputs[0].token_ids == g
    assert _gen(llm, "Hello", temperature=0.8, min_p=1.0, seed=3, max_tokens=6)[0].outputs[0].token_ids == g


def test_chat_renders_deepseek_v4_prompt_and_generates(llm):
    from vllm.tokenizers.deepseek_v4_encoding import BOS

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    out = llm.chat(msgs, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert out.prompt == f"{BOS}Be brief.<｜User｜>Hello<｜Assistant｜></think>"
    tok = llm.get_tokenizer()
    assert out.prompt_token_ids[0] == tok.token_to_id(BOS)
    assert tok.token_to_id("<｜User｜>") in out.prompt_token_ids and tok.token_to_id("</think>") == out.prompt_token_ids[-1]
    assert len(out.outputs[0].token_ids) == 4
    two = llm.chat([msgs, [{"role": "user", "content": "Hi"}]], SamplingParams(temperature=0, max_tokens=2),
                   use_tqdm=False, chat_template_kwargs={"thinking": True})
    assert len(two) == 2 and two[1].prompt.endswith("<｜Assistant｜><think>")
