"""Linear-layer quantization methods: how a layer stores its weight in a checkpoint format.

A method owns parameter creation (optionally stacked over experts) and describes the stored
weight as a `QuantWeight`, which the MoE/GEMM backend multiplies (`vllm/kernels/quant_gemm.py`
has the torch reference and the Triton kernel). `get_linear_method` maps a checkpoint format to one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from vllm.kernels.quant_gemm import FP8_BLOCK, MXFP4, MXFP4_GROUP, PLAIN, QuantWeight


def _param(shape: tuple[int, ...], dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)


class LinearMethod(ABC):
    """Stores `weight` (+ `weight_scale`) on a layer; `experts` adds a leading expert dim."""

    name = "base"
    fmt = PLAIN
    block: tuple[int, int] = (128, 128)
    act_fp8 = False
    """The format quantizes input activations to FP8 (per token, 128-channel blocks, UE8M0)."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, out_f: int, in_f: int, dtype: torch.dtype, experts: int | None = None):
        """Register the layer's parameters (full local shapes, checkpoint dtypes)."""

    def quant_weight(self, layer: nn.Module) -> QuantWeight:
        return QuantWeight(layer.weight, getattr(layer, "weight_scale", None), self.fmt, self.block, self.act_fp8)

    def weight(self, layer: nn.Module, expert: int | None = None) -> torch.Tensor:
        """Dense `[out, in]` (fp32 when quantized) of the layer or of one expert."""
        return self.quant_weight(layer).dense(expert)


class UnquantizedLinearMethod(LinearMethod):
    name = "unquantized"

    def create_weights(self, layer, out_f, in_f, dtype, experts=None):
        lead = (experts,) if experts else ()
        layer.weight = _param(lead + (out_f, in_f), dtype)


class Fp8BlockLinearMethod(LinearMethod):
    """DeepSeek FP8: e4m3 weight, one UE8M0 scale per weight block, FP8 per-token 128-block activations."""

    name = "fp8_block"
    fmt = FP8_BLOCK
    act_fp8 = True

    def __init__(self, block: tuple[int, int] = (128, 128)):
        self.block = tuple(block)

    def create_weights(self, layer, out_f, in_f, dtype, experts=None):
        lead = (experts,) if experts else ()
        bo, bi = self.block
        layer.weight = _param(lead + (out_f, in_f), torch.float8_e4m3fn)
        layer.weight_scale = _param(lead + (-(-out_f // bo), -(-in_f // bi)), torch.uint8)


class Mxfp4LinearMethod(LinearMethod):
    """MXFP4 weight (packed e2m1, UE8M0 per 32 inputs) with FP8 per-token 128-block activations."""

    name = "mxfp4"
    fmt = MXFP4
    act_fp8 = True

    def create_weights(self, layer, out_f, in_f, dtype, experts=None):
        if in_f % MXFP4_GROUP:
            raise ValueError(f"MXFP4 weights need in_features % {MXFP4_GROUP} == 0, got {in_f}")
        lead = (experts,) if experts else ()
        layer.weight = _param(lead + (out_f, in_f // 2), torch.int8)
        layer.weight_scale = _param(lead + (out_f, in_f // MXFP4_GROUP), torch.uint8)


def get_linear_method(fmt: str | None, block: tuple[int, int] = (128, 128)) -> LinearMethod:
    """Format name ('fp8', 'fp4', None) -> method instance."""
    table = {None: UnquantizedLinearMethod, "fp8": lambda: Fp8BlockLinearMethod(block), "fp4": Mxfp4LinearMethod}
    if fmt not in table:
        raise ValueError(f"unknown weight format {fmt!r}; valid: {sorted(k for k in table if k)} or None")
    return table[fmt]()
