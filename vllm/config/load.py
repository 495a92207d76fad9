"""LoadConfig: how checkpoint weights become model weights."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadConfig:
    dequantize_weights: bool = False
    """Dequantize FP8/MXFP4 checkpoint weights to the model dtype at load (else keep them quantized)."""
    show_progress: bool = True
