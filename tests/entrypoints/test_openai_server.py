"""The OpenAI-compatible server over 127.0.0.1 with the official `openai` client."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.engine.async_llm import AsyncLLM  # noqa: E402
from vllm.entrypoints.openai.api_server import build_app  # noqa: E402
from vllm.entrypoints.openai.serving import ServingOptions  # noqa: E402
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec  # noqa: E402
from vllm.worker.sampler import SampledToken  # noqa: E402

KEY, NAME = "sk-test", "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(llm):
    app = build_app(llm, ServingOptions(NAME, 1024, "deepseek_v4", "deepseek_v4", True), api_key=KEY)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.02)
    return srv, t, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(checkpoint_factory):
    path = checkpoint_factory(TinyModelSpec(naming="hub"))
    config = VllmConfig(model_config=ModelConfig(model=path, dtype="float32", max_model_len=1024),
                        scheduler_config=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=128),
                        cache_config=CacheConfig(block_size=16))
    llm = AsyncLLM(config)
    srv, t, base = _start(llm)
    yield llm, base
    srv.should_exit = True
    t.join(5)
    llm.shutdown()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0)


def _idle(llm, timeout=5.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if not llm.engine.has_unfinished_requests() and llm.engine.kv_cache_manager.all_blocks_free():
            return True
        time.sleep(0.02)
    return False


def test_models_and_completions(client):
    assert [m.id for m in client.models.list().data] == [NAME]
    r = client.completions.create(model=NAME, prompt="Hello", max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5 and r.usage.prompt_tokens > 0
    batch = client.completions.create(model=NAME, prompt=["a b", [20, 21, 22]], max_tokens=3, temperature=0, n=2,
                                      echo=True, logprobs=2)
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    assert batch.choices[0].text.startswith("a b") and len(batch.choices[0].logprobs.token_logprobs) == 3
    chunks = list(client.completions.create(model=NAME, prompt="Hello", max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == 5


def test_chat_streaming_equals_whole_and_reasoning_split(client):
    msgs = [{"role": "user", "content": "Hi there"}]
    whole = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=8, temperature=0)
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens == 8
    stream = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole.choices[0].message.content
    think = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=8, temperature=0,
                                           extra_body={"chat_template_kwargs": {"thinking": True}})
    msg = think.choices[0].message
    reasoning = msg.model_extra.get("reasoning_content")
    assert reasoning is not None and (msg.content or "") + reasoning != ""  # random text: all reasoning or split


def test_concurrent_requests(server):
    async def main():
        c = openai.AsyncOpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0)
        rs = await asyncio.gather(*(c.completions.create(model=NAME, prompt=f"prompt {i}", max_tokens=6,
                                                         temperature=0, extra_body={"ignore_eos": True})
                                 for i in range(12)))
        await c.close()
        return rs
    rs = asyncio.run(main())
    assert all(r.usage.completion_tokens == 6 for r in rs)
    assert _idle(server[0])


def test_tool_call_round_trip_through_the_server(server, client, monkeypatch):
    """A random model cannot choose tools: script the sampler to emit a DSML block, check the
    server returns OpenAI tool_calls and no markup, then send the result back."""
    llm = server[0]
    tok = llm.tokenizer
    text = ('Let me check.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n'
            '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
            '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>')
    script = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    sampler = llm.engine.runner.sampler
    real = sampler.sample

    def scripted(logits, params, generator, banned=None):
        out = real(logits, params, generator, banned)
        i = scripted.i
        scripted.i += 1
        return SampledToken(script[min(i, len(script) - 1)], out.logprob, out.rank, out.top)

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    for stream in (False, True):
        scripted.i = 0
        monkeypatch.setattr(sampler, "sample", scripted)
        r = client.chat.completions.create(model=NAME, messages=msgs, tools=tools, tool_choice="auto",
                                           max_tokens=len(script) + 2, temperature=0, stream=stream)
        if stream:
            chunks = [c for c in r if c.choices]
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
            finish = chunks[-1].choices[0].finish_reason
        else:
            content, calls, finish = r.choices[0].message.content, r.choices[0].message.tool_calls, \
                r.choices[0].finish_reason
        monkeypatch.setattr(sampler, "sample", real)  # streamed tokens are generated while iterating
        assert content == "Let me check." and finish == "tool_calls"
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
            [("get_weather", {"city": "Paris", "days": 3})]
    follow = msgs + [{"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": calls[0].id, "type": "function", "function": {"name": "get_weather",
                                                             "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21C"}]
    r = client.chat.completions.create(model=NAME, messages=follow, tools=tools, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("thinking", [False, True])
def test_tool_choice_required_and_named_force_a_call(server, client, monkeypatch, thinking):
    """A random model never calls tools by itself: "required" and a named choice force its output to
    open a DSML tool-call block (after the reasoning in thinking mode). A scripted sampler that obeys
    the forcing and then closes the block shows the server returns it as the call."""
    llm = server[0]
    tok = llm.tokenizer
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
             for n in ("get_weather", "get_time")]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    kw = dict(model=NAME, messages=msgs, tools=tools, temperature=0,
              extra_body={"chat_template_kwargs": {"thinking": thinking}})
    opening = '\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="'
    named = {"type": "function", "function": {"name": "get_time"}}

    if not thinking:  # (the random model does not end its reasoning within a short output)
        r = client.chat.completions.create(tool_choice=named, max_tokens=60, logprobs=True, **kw)
        assert "".join(t.token for t in r.choices[0].logprobs.content).startswith(opening + 'get_time">\n')

    sampler = llm.engine.runner.sampler
    real = sampler.sample
    for choice, script_text, name in ((named, "", "get_time"), ("required", 'get_weather">\n', "get_weather")):
        script = tok.encode(("Hmm.</think>" if thinking else "") + script_text
                            + "</｜DSML｜invoke>\n</｜DSML｜tool_calls>", add_special_tokens=False) + [tok.eos_token_id]

        def scripted(logits, params, generator, banned=None):
            out = real(logits, params, generator, banned)
            if torch.isfinite(logits).sum() == 1:  # forced by the tool-choice processor
                return out
            scripted.i += 1
            return SampledToken(script[min(scripted.i - 1, len(script) - 1)], out.logprob, out.rank, out.top)
        scripted.i = 0
        monkeypatch.setattr(sampler, "sample", scripted)
        r = client.chat.completions.create(tool_choice=choice, max_tokens=120, **kw)
        monkeypatch.setattr(sampler, "sample", real)
        calls = r.choices[0].message.tool_calls
        assert [(c.function.name, c.function.arguments) for c in calls] == [(name, "{}")], r.choices[0]
        assert r.choices[0].finish_reason == "tool_calls"
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(tool_choice={"type": "function", "function": {"name": "nope"}}, **kw)
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model=NAME, messages=msgs, tool_choice="required", max_tokens=2)


def test_errors_and_the_server_keeps_answering(server, client):
    base = server[1]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="x", max_tokens=4, temperature=-1)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt=[5] * 1100, max_tokens=4)
    assert "maximum context length is 1024 tokens" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=[{"role": "wizard", "content": "x"}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    r = httpx.post(base + "/v1/completions", json={"model": NAME, "prompt": "x", "max_tokens": "many"},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(base + "/health").status_code == 200
    assert client.completions.create(model=NAME, prompt="still here", max_tokens=2).usage.completion_tokens == 2


def test_client_disconnect_aborts_and_frees_blocks(server):
    llm, base = server
    with httpx.stream("POST", base + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": NAME, "prompt": "long story", "max_tokens": 200, "stream": True,
                            "ignore_eos": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # leave after the first chunk
    assert _idle(llm)


def test_tokenize_detokenize_version_metrics(server):
    base, h = server[1], {"Authorization": f"Bearer {KEY}"}
    t = httpx.post(base + "/tokenize", json={"prompt": "Hello world"}).json()
    assert t["count"] == len(t["tokens"]) > 0 and t["max_model_len"] == 1024
    assert httpx.post(base + "/detokenize", json={"tokens": t["tokens"]}).json()["prompt"] == "Hello world"
    chat = httpx.post(base + "/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["count"] > 2
    assert "version" in httpx.get(base + "/version").json()
    m = httpx.get(base + "/metrics", headers=h).text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:time_per_output_token_seconds_count", "vllm:e2e_request_latency_seconds_sum",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
        assert name in m
    gen = [line for line in m.splitlines() if line.startswith("vllm:generation_tokens_total")]
    assert float(gen[0].split()[-1]) > 0


def test_vllm_serve_builtin_model_and_sigterm(tmp_path):
    """`vllm serve` with no model serves the built-in tiny model; SIGTERM exits 0."""
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    env = {**os.environ, "HOME": os.environ.get("HOME", str(tmp_path))}
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.cli", "serve", "--port", str(port),
                             "--max-model-len", "512", "--max-num-seqs", "4"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        model = c.models.list().data[0].id
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
        assert r.usage.completion_tokens >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("backend", ["openai", "openai-chat"])
def test_bench_serve_against_our_server(server, backend, capsys, tmp_path):
    from vllm.entrypoints.cli import main

    out = tmp_path / "r.json"
    rc = main(["bench", "serve", "--backend", backend, "--base-url", server[1], "--api-key", KEY, "--num-prompts", "6",
               "--random-input-len", "16", "--random-output-len", "5", "--max-concurrency", "3", "--ignore-eos",
               "--result-filename", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["failed"] == 0 and res["completed"] == 6 and res["total_output_tokens"] == 30, res["errors"]
    for label in ("Successful requests:", "Failed requests:", "Request throughput", "Output token throughput",
                  "Total Token throughput", "Mean TTFT", "Median TTFT", "P99 TTFT", "Mean TPOT", "P99 ITL",
                  "Mean E2EL"):
        assert label in printed


def test_one_request_failing_gives_500_while_others_continue(server, client, monkeypatch):
    llm, base = server
    sampler = llm.engine.runner.sampler
    real = sampler.sample

    def sample(logits, params, generator, banned=None):
        if params.seed == 13:
            raise RuntimeError("sampler exploded")
        return real(logits, params, generator, banned)
    monkeypatch.setattr(sampler, "sample", sample)

    async def main():
        c = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
        kw = dict(model=NAME, max_tokens=8, extra_body={"ignore_eos": True})
        good = [c.completions.create(prompt=f"p{i}", temperature=0, **kw) for i in range(3)]
        rs = await asyncio.gather(c.completions.create(prompt="bad", seed=13, **kw), *good, return_exceptions=True)
        stream = await c.chat.completions.create(messages=[{"role": "user", "content": "x"}], seed=13, stream=True,
                                                 **kw)
        with pytest.raises(openai.APIError, match="sampler exploded"):  # in-band error event once streaming
            _ = [ch async for ch in stream]
        await c.close()
        return rs
    bad, *good = asyncio.run(main())
    assert isinstance(bad, openai.InternalServerError) and "sampler exploded" in str(bad)
    assert all(r.usage.completion_tokens == 8 for r in good)
    assert httpx.get(base + "/health").status_code == 200
    assert _idle(llm)


def test_engine_failure_gives_500_and_health_503(checkpoint_factory, monkeypatch):
    llm = AsyncLLM(VllmConfig(model_config=ModelConfig(model=checkpoint_factory(TinyModelSpec(naming="hub")),
                                                       dtype="float32", max_model_len=256),
                              scheduler_config=SchedulerConfig(max_num_seqs=4),
                              cache_config=CacheConfig(block_size=16)))
    srv, t, base = _start(llm)
    try:
        def boom(sched):
            raise RuntimeError("device lost")
        monkeypatch.setattr(llm.engine.runner, "execute", boom)
        c = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.InternalServerError, match="device lost"):
            c.completions.create(model=NAME, prompt="x", max_tokens=2)
        assert httpx.get(base + "/health").status_code == 503
    finally:
        srv.should_exit = True
        t.join(5)
        llm.shutdown()
