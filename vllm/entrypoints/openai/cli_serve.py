"""`vllm serve [MODEL]`: flags from the config dataclasses plus the server's own; runs uvicorn.

SIGTERM/SIGINT: uvicorn stops accepting connections, lets in-flight requests finish (up to
`--graceful-shutdown-timeout` seconds, then they are aborted), the engine thread stops, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal

from vllm.config import CacheConfig, DeviceConfig, LoadConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.config.cli_args import add_config_args, config_from_args

logger = logging.getLogger("vllm.serve")
TOOL_PARSERS = ("deepseek_v4",)
REASONING_PARSERS = ("deepseek_v4",)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory or a Hugging Face id in the local HF cache (default: built-in tiny model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1/*")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--tool-call-parser", choices=TOOL_PARSERS, default=None)
    p.add_argument("--enable-auto-tool-choice", action="store_true")
    p.add_argument("--reasoning-parser", choices=REASONING_PARSERS, default=None)
    p.add_argument("--tokenizer-mode", choices=("auto", "deepseek_v4"), default="auto",
                   help="auto picks deepseek_v4 (the spec §6.2 encoder) for DeepSeek V4 checkpoints")
    p.add_argument("--enforce-eager", action="store_true", help="accepted (there are no CUDA graphs yet)")
    p.add_argument("--trust-remote-code", action="store_true", help="accepted (nothing remote is run)")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--graceful-shutdown-timeout", type=float, default=10.0)
    add_config_args(p, ModelConfig, skip=("model",))
    add_config_args(p, CacheConfig)
    add_config_args(p, SchedulerConfig)
    add_config_args(p, DeviceConfig)
    add_config_args(p, LoadConfig, skip=("show_progress",))


def resolve_model_path(model: str | None) -> str:
    from pathlib import Path

    from vllm.model_executor.model_loader.builtin import builtin_model_dir

    if model is None:
        return str(builtin_model_dir())
    if Path(model).is_dir():
        return model
    from vllm.model_executor.model_loader.hf_cache import find_in_hf_cache

    return find_in_hf_cache(model)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vllm.engine.async_llm import AsyncLLM
    from vllm.entrypoints.openai.api_server import build_app
    from vllm.entrypoints.openai.serving import ServingOptions

    if args.tensor_parallel_size != 1:
        raise ValueError(f"tensor_parallel_size={args.tensor_parallel_size}: this engine runs on one device for now")
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser deepseek_v4")
    path = resolve_model_path(args.model)
    config = VllmConfig(
        model_config=config_from_args(ModelConfig, args, model=path),
        load_config=config_from_args(LoadConfig, args),
        device_config=config_from_args(DeviceConfig, args),
        scheduler_config=config_from_args(SchedulerConfig, args),
        cache_config=config_from_args(CacheConfig, args))
    llm = AsyncLLM(config)
    name = args.served_model_name or args.model or "tiny-deepseek-v4"
    opts = ServingOptions(name, llm.engine.max_model_len, args.reasoning_parser, args.tool_call_parser,
                          args.enable_auto_tool_choice)
    app = build_app(llm, opts, args.api_key)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                           timeout_graceful_shutdown=args.graceful_shutdown_timeout))
    logger.info("serving %s on http://%s:%d", name, args.host, args.port)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler that
    # was installed before it: make that a no-op so a requested shutdown exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        llm.shutdown()
    return 0
