"""Shared pieces of the offline benchmarks: engine construction, random prompts, JSON output."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from vllm import LLM


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model directory (default: the built-in tiny model)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--attention-backend", default=None)
    p.add_argument("--moe-backend", default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_ds_mla"])
    p.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--output-json", default=None, help="write the results as JSON to this path")


def make_llm(args: argparse.Namespace) -> LLM:
    from vllm.model_executor.model_loader.builtin import builtin_model_dir

    return LLM(model=args.model or str(builtin_model_dir()), dtype=args.dtype, device=args.device,
               attention_backend=args.attention_backend, moe_backend=args.moe_backend, max_model_len=args.max_model_len,
               max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
               block_size=args.block_size, kv_cache_dtype=args.kv_cache_dtype,
               kv_cache_memory_bytes=args.kv_cache_memory_bytes, gpu_memory_utilization=args.gpu_memory_utilization,
               enable_prefix_caching=args.enable_prefix_caching, seed=args.seed, show_progress=False)


def random_prompts(llm: LLM, n: int, input_len: int, seed: int) -> list[dict]:
    """`n` prompts of `input_len` random token ids (fixed seed), avoiding the special ids at the bottom."""
    vocab = llm.llm_engine.runner.model_cfg.vocab_size
    tok = llm.get_tokenizer()
    high = tok.vocab_size if tok is not None else vocab
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(min(32, high - 1), high) for _ in range(input_len)]}
            for _ in range(n)]


def write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2))
