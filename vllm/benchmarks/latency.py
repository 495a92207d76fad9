"""`vllm bench latency`: time one batch end to end (prefill + output-len decode steps)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from vllm import SamplingParams
from vllm.benchmarks.common import add_engine_args, make_llm, random_prompts, write_json


def add_cli_args(p: argparse.ArgumentParser) -> None:
    add_engine_args(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-iters-warmup", type=int, default=1)
    p.add_argument("--num-iters", type=int, default=5)


def main(args: argparse.Namespace) -> dict:
    llm = make_llm(args)
    prompts = random_prompts(llm, args.batch_size, args.input_len, args.seed)
    params = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=args.output_len)

    def run() -> float:
        llm.reset_prefix_cache()  # every iteration prefills for real
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    for _ in range(args.num_iters_warmup):
        run()
    latencies = np.array([run() for _ in range(args.num_iters)])
    pct = {p: float(np.percentile(latencies, p)) for p in (10, 25, 50, 75, 90, 99)}
    print(f"Avg latency: {latencies.mean():.4f} seconds")
    for p, v in pct.items():
        print(f"{p}% percentile latency: {v:.4f} seconds")
    results = {"avg_latency": float(latencies.mean()), "latencies": latencies.tolist(),
               "percentiles": {str(k): v for k, v in pct.items()}, "batch_size": args.batch_size,
               "input_len": args.input_len, "output_len": args.output_len}
    write_json(args.output_json, results)
    return results
