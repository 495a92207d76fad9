"""ModelConfig: which checkpoint, in which dtype, how long a sequence may be."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}


@dataclass(frozen=True)
class ModelConfig:
    model: str
    """Checkpoint directory (config.json, *.safetensors, tokenizer files)."""
    tokenizer: str | None = None
    """Tokenizer directory; defaults to `model`."""
    dtype: str = "auto"
    """'auto' (checkpoint's torch_dtype), 'bfloat16', 'float16' or 'float32'."""
    seed: int = 0
    """Seed of the engine's sampling generator (requests may carry their own)."""
    max_model_len: int | None = None
    """Prompt + output tokens per sequence; None = the model's max_position_embeddings."""
    skip_tokenizer_init: bool = False
    """Run on token ids only: no tokenizer is loaded and outputs carry no text."""

    def __post_init__(self):
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")

    def torch_dtype(self, checkpoint_dtype: str) -> torch.dtype:
        name = checkpoint_dtype if self.dtype == "auto" else self.dtype
        return _DTYPES.get(name, torch.bfloat16)
