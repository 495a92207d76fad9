"""`vllm bench serve`: an asyncio load generator for any OpenAI-compatible endpoint.

Random token prompts (fixed seed) are sent with streaming to /v1/completions (`--backend openai`)
or /v1/chat/completions (`openai-chat`), at `--request-rate` (Poisson arrivals; inf = all at
once) under `--max-concurrency`. Prints vLLM's result block and optionally saves JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import numpy as np

from vllm.benchmarks.common import write_json


def add_cli_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("openai", "openai-chat"), default="openai")
    p.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000 (default from --host/--port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", default=None, help="default /v1/completions or /v1/chat/completions")
    p.add_argument("--model", default=None, help="model name (default: the server's first model)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--dataset-name", choices=("random",), default="random")
    p.add_argument("--random-input-len", type=int, default=128)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--result-filename", default=None)


@dataclass
class RequestResult:
    ok: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""


async def _one(client, url: str, body: dict, headers: dict) -> RequestResult:
    import httpx

    res, start = RequestResult(), time.perf_counter()
    last = start
    try:
        async with client.stream("POST", url, json=body, headers=headers, timeout=None) as r:
            if r.status_code != 200:
                res.error = (await r.aread()).decode(errors="replace")[:300]
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    res.error = json.dumps(chunk["error"])[:300]
                    return res
                if chunk.get("usage"):
                    res.output_tokens = chunk["usage"]["completion_tokens"]
                    res.prompt_tokens = chunk["usage"]["prompt_tokens"]
                if not chunk.get("choices"):
                    continue
                c = chunk["choices"][0]
                piece = c.get("text") or (c.get("delta") or {}).get("content") or \
                    (c.get("delta") or {}).get("reasoning_content")
                if piece:
                    now = time.perf_counter()
                    if res.ttft == 0.0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
        res.latency, res.ok = time.perf_counter() - start, True
    except httpx.HTTPError as e:
        res.error = repr(e)
    return res


async def _run(args: argparse.Namespace) -> dict:
    import httpx

    base = args.base_url or f"http://{args.host}:{args.port}"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    chat = args.backend == "openai-chat"
    url = base + (args.endpoint or ("/v1/chat/completions" if chat else "/v1/completions"))
    async with httpx.AsyncClient() as client:
        model = args.model or (await client.get(base + "/v1/models", headers=headers)).json()["data"][0]["id"]
        rng = random.Random(args.seed)
        vocab = 400  # random ids in a range every tokenizer of ours has (above the special tokens)
        bodies = []
        for _ in range(args.num_prompts):
            ids = [rng.randrange(32, vocab) for _ in range(args.random_input_len)]
            body = {"model": model, "max_tokens": args.random_output_len, "stream": True, "temperature": 0,
                    "stream_options": {"include_usage": True}, "ignore_eos": args.ignore_eos}
            if chat:
                body["messages"] = [{"role": "user", "content": " ".join(str(t) for t in ids)}]
            else:
                body["prompt"] = ids
            bodies.append(body)
        sem = asyncio.Semaphore(args.max_concurrency or len(bodies) or 1)

        async def limited(body):
            async with sem:
                return await _one(client, url, body, headers)

        start, tasks = time.perf_counter(), []
        for body in bodies:
            tasks.append(asyncio.create_task(limited(body)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return _report(args, results, duration, model)


def _stats(name: str, values: list[float]) -> dict:
    a = np.array(values or [0.0]) * 1000
    return {f"mean_{name}_ms": float(a.mean()), f"median_{name}_ms": float(np.median(a)),
            f"p99_{name}_ms": float(np.percentile(a, 99))}


def _report(args, results: list[RequestResult], duration: float, model: str) -> dict:
    ok = [r for r in results if r.ok]
    n_in, n_out = sum(r.prompt_tokens for r in ok), sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    out = {"backend": args.backend, "model_id": model, "num_prompts": args.num_prompts, "completed": len(ok),
           "failed": len(results) - len(ok), "duration": duration, "total_input_tokens": n_in,
           "total_output_tokens": n_out, "request_throughput": len(ok) / duration,
           "output_throughput": n_out / duration, "total_token_throughput": (n_in + n_out) / duration,
           **_stats("ttft", [r.ttft for r in ok]), **_stats("tpot", tpot),
           **_stats("itl", [x for r in ok for x in r.itl]), **_stats("e2el", [r.latency for r in ok]),
           "errors": [r.error for r in results if not r.ok][:5]}
    print("{s:{c}^50}".format(s=" Serving Benchmark Result ", c="="))
    rows = [("Successful requests:", len(ok)), ("Failed requests:", out["failed"]),
            ("Benchmark duration (s):", f"{duration:.2f}"), ("Total input tokens:", n_in),
            ("Total generated tokens:", n_out), ("Request throughput (req/s):", f"{out['request_throughput']:.2f}"),
            ("Output token throughput (tok/s):", f"{out['output_throughput']:.2f}"),
            ("Total Token throughput (tok/s):", f"{out['total_token_throughput']:.2f}")]
    for label, key in (("Time to First Token", "ttft"), ("Time per Output Token (excl. 1st token)", "tpot"),
                       ("Inter-token Latency", "itl"), ("End-to-end Latency", "e2el")):
        rows.append(("{s:{c}^50}".format(s=f" {label} ", c="-"), None))
        for stat in ("mean", "median", "p99"):
            rows.append((f"{stat.capitalize() if stat != 'p99' else 'P99'} {key.upper()} (ms):",
                         f"{out[f'{stat}_{key}_ms']:.2f}"))
    for label, value in rows:
        print(label if value is None else f"{label:<40}{value:<10}")
    print("=" * 50)
    if args.save_result or args.result_filename:
        write_json(args.result_filename or f"{args.backend}-{int(time.time())}.json", out)
    return out


def main(args: argparse.Namespace) -> dict:
    return asyncio.run(_run(args))
