"""The `vllm` command line."""

from __future__ import annotations

import argparse
import sys

import vllm


def _generate(args: argparse.Namespace) -> int:
    from vllm import LLM, SamplingParams
    from vllm.model_executor.model_loader.builtin import builtin_model_dir

    model = args.model or str(builtin_model_dir())
    llm = LLM(model=model, dtype=args.dtype, seed=args.seed, max_model_len=args.max_model_len,
              device=args.device, attention_backend=args.attention_backend, moe_backend=args.moe_backend)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_tokens=args.max_tokens, seed=args.seed)
    for out in llm.generate(args.prompt, params, use_tqdm=False):
        print(f"Prompt: {out.prompt!r}\nOutput: {out.outputs[0].text!r} ({out.outputs[0].finish_reason})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm", description="DeepSeek V4 inference engine")
    parser.add_argument("--version", action="version", version=f"vllm {vllm.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="offline generation for one or more prompts")
    gen.add_argument("model", nargs="?", default=None, help="model directory (default: the built-in tiny model)")
    gen.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--max-model-len", type=int, default=None)
    gen.add_argument("--device", default="auto")
    gen.add_argument("--attention-backend", default=None)
    gen.add_argument("--moe-backend", default=None)
    gen.set_defaults(func=_generate)
    from vllm.entrypoints.openai.cli_serve import add_serve_args, run_serve

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    add_serve_args(serve)
    serve.set_defaults(func=run_serve)
    _add_bench(sub)
    return parser


def _add_bench(sub) -> None:
    from vllm.benchmarks import latency, serve, throughput

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    for name, mod in (("latency", latency), ("throughput", throughput), ("serve", serve)):
        p = bench.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_cli_args(p)
        p.set_defaults(func=_bench_runner(mod.main))


def _bench_runner(bench_main):
    def run(args: argparse.Namespace) -> int:
        bench_main(args)  # prints its results (and writes --output-json)
        return 0
    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
