"""Find the safetensors files of a checkpoint directory and which file holds each tensor."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the tensor or file."""


def tensor_index(model_dir: str | Path) -> dict[str, Path]:
    """name -> file for every tensor in `model_dir` (`model.safetensors.index.json` or `*.safetensors`)."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {model_dir}")
    index: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), "pt") as sf:
            for name in sf.keys():
                if name in index:
                    raise CheckpointError(f"tensor {name!r} appears in both {index[name].name} and {f.name}")
                index[name] = f
    idx_file = model_dir / "model.safetensors.index.json"
    if idx_file.exists():
        declared = set(json.loads(idx_file.read_text()).get("weight_map", {}))
        missing = sorted(declared - set(index))
        if missing:
            raise CheckpointError(f"index lists tensors absent from the shards, e.g. {missing[:5]}")
    return index
