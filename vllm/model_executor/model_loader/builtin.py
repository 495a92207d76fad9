"""The built-in tiny DeepSeek V4: created deterministically on first use in the user cache dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec, write_tiny_checkpoint

BUILTIN_SPEC = TinyModelSpec(dtype="bfloat16", seed=0)
BUILTIN_NAME = "tiny-deepseek-v4"


def builtin_model_dir() -> Path:
    """Path of the built-in tiny model, writing it first if absent (atomic rename, safe to race)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllm-dsv4"
    target = cache / BUILTIN_NAME
    if (target / "config.json").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
    try:
        write_tiny_checkpoint(tmp, BUILTIN_SPEC)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
