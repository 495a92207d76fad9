"""Checkpoint discovery and weight loading."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vllm.model_executor.model_loader.loader import load_weights
from vllm.model_executor.model_loader.safetensors_index import CheckpointError
from vllm.model_executor.models.registry import resolve_model_class


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{model_dir}: no config.json (is this a model directory?)")
    return json.loads(path.read_text())


def resolve_model(model_dir: str | Path):
    """-> (model class, parsed config) named by the directory's config.json."""
    raw = read_config(model_dir)
    model_cls, config_cls = resolve_model_class(raw)
    return model_cls, config_cls.from_dict(raw)


def get_model(model_dir: str | Path, dtype: torch.dtype, device: torch.device | str = "cpu",
              dequantize: bool = False, show_progress: bool = True, resolved=None):
    """Build the architecture named by config.json and load its weights. -> (model, parsed config).

    `resolved`: a `resolve_model(model_dir)` result the caller already has.
    """
    model_cls, cfg = resolved or resolve_model(model_dir)
    with torch.device(device):
        model = model_cls(cfg, dtype, dequantized=dequantize)
    block = cfg.quant.weight_block if cfg.quant else (128, 128)
    load_weights(model, model_dir, dequantize=dequantize, block=block, show_progress=show_progress)
    return model.eval(), cfg
