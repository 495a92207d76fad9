"""Linear-layer quantization methods: how a layer stores its weight and runs its matmul.

A method owns parameter creation (optionally stacked over experts) and dense dequantization;
`get_linear_method` maps a checkpoint format to one. These are torch references: quantized
matmuls dequantize and accumulate in fp32 (Triton GEMMs come with the kernels issues).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from vllm.model_executor.layers.quantization.formats import (
    dequant_fp8_block,
    dequant_mxfp4,
    quant_dequant_fp8_act,
)


def _param(shape: tuple[int, ...], dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)


class LinearMethod(ABC):
    """Stores `weight` (+ `weight_scale`) on a layer; `experts` adds a leading expert dim."""

    name = "base"
    quantized = True

    @abstractmethod
    def create_weights(self, layer: nn.Module, out_f: int, in_f: int, dtype: torch.dtype, experts: int | None = None):
        """Register the layer's parameters (full local shapes, checkpoint dtypes)."""

    @abstractmethod
    def dequant(self, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """Dense fp32 `[out, in]` from one (expert's) stored weight."""

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Activation quantization the format implies (identity when unquantized)."""
        return x

    def weight(self, layer: nn.Module, expert: int | None = None) -> torch.Tensor:
        w, s = layer.weight, getattr(layer, "weight_scale", None)
        if expert is not None:
            w, s = w[expert], (None if s is None else s[expert])
        return self.dequant(w, s)

    def matmul(self, layer: nn.Module, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        """x @ W^T; quantized formats compute in fp32 and return x.dtype."""
        return F.linear(self.prepare_input(x).float(), self.weight(layer, expert)).to(x.dtype)


class UnquantizedLinearMethod(LinearMethod):
    name = "unquantized"
    quantized = False

    def create_weights(self, layer, out_f, in_f, dtype, experts=None):
        lead = (experts,) if experts else ()
        layer.weight = _param(lead + (out_f, in_f), dtype)

    def dequant(self, weight, scale):
        return weight

    def matmul(self, layer, x, expert=None):
        w = layer.weight if expert is None else layer.weight[expert]
        return F.linear(x, w.to(x.dtype))


class Fp8BlockLinearMethod(LinearMethod):
    """DeepSeek FP8: e4m3 weight, one UE8M0 scale per weight block, FP8 per-token 128-block activations."""

    name = "fp8_block"

    def __init__(self, block: tuple[int, int] = (128, 128)):
        self.block = tuple(block)

    def create_weights(self, layer, out_f, in_f, dtype, experts=None):
        lead = (experts,) if experts else ()
        bo, bi = self.block
        layer.weight = _param(lead + (out_f, in_f), torch.float8_e4m3fn)
        layer.weight_scale = _param(lead + (-(-out_f // bo), -(-in_f // bi)), torch.uint8)

    def dequant(self, weight, scale):
        return dequant_fp8_block(weight, scale, self.block)

    def prepare_input(self, x):
        return quant_dequant_fp8_act(x, self.block[1])


class Mxfp4LinearMethod(LinearMethod):
    """MXFP4 weight (packed e2m1, UE8M0 per 32 inputs) with FP8 per-token 128-block activations."""

    name = "mxfp4"
    group = 32

    def create_weights(self, layer, out_f, in_f, dtype, experts=None):
        if in_f % self.group:
            raise ValueError(f"MXFP4 weights need in_features % {self.group} == 0, got {in_f}")
        lead = (experts,) if experts else ()
        layer.weight = _param(lead + (out_f, in_f // 2), torch.int8)
        layer.weight_scale = _param(lead + (out_f, in_f // self.group), torch.uint8)

    def dequant(self, weight, scale):
        return dequant_mxfp4(weight, scale, self.group)

    def prepare_input(self, x):
        return quant_dequant_fp8_act(x, 128)


def get_linear_method(fmt: str | None, block: tuple[int, int] = (128, 128)) -> LinearMethod:
    """Format name ('fp8', 'fp4', None) -> method instance."""
    table = {None: UnquantizedLinearMethod, "fp8": lambda: Fp8BlockLinearMethod(block), "fp4": Mxfp4LinearMethod}
    if fmt not in table:
        raise ValueError(f"unknown weight format {fmt!r}; valid: {sorted(k for k in table if k)} or None")
    return table[fmt]()
