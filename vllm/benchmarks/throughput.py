"""`vllm bench throughput`: many random prompts through LLM.generate; requests and tokens per second."""

from __future__ import annotations

import argparse
import time

from vllm import SamplingParams
from vllm.benchmarks.common import add_engine_args, make_llm, random_prompts, write_json


def add_cli_args(p: argparse.ArgumentParser) -> None:
    add_engine_args(p)
    p.add_argument("--num-prompts", type=int, default=32)


def main(args: argparse.Namespace) -> dict:
    llm = make_llm(args)
    prompts = random_prompts(llm, args.num_prompts, args.input_len, args.seed)
    params = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=args.output_len)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    n_in = sum(len(o.prompt_token_ids) for o in outs)
    n_out = sum(len(c.token_ids) for o in outs for c in o.outputs)
    print(f"Throughput: {len(outs) / elapsed:.2f} requests/s, {(n_in + n_out) / elapsed:.2f} total tokens/s, "
          f"{n_out / elapsed:.2f} output tokens/s")
    print(f"Total num prompt tokens:  {n_in}")
    print(f"Total num output tokens:  {n_out}")
    results = {"elapsed_time": elapsed, "num_requests": len(outs), "total_num_tokens": n_in + n_out,
               "requests_per_second": len(outs) / elapsed, "tokens_per_second": (n_in + n_out) / elapsed,
               "output_tokens_per_second": n_out / elapsed, "max_num_seqs": args.max_num_seqs,
               "max_num_batched_tokens": args.max_num_batched_tokens, "input_len": args.input_len,
               "output_len": args.output_len, "num_preemptions": llm.llm_engine.scheduler.num_preemptions}
    write_json(args.output_json, results)
    return results
