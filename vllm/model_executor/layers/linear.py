"""Tensor-parallel-ready linear layers (world size 1 today).

Column-parallel layers shard output features, row-parallel layers shard input features and
all-reduce. Every parameter carries a `weight_loader(param, tensor)` that takes the full
checkpoint tensor and copies this rank's shard, so the loader never needs to know about TP.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from vllm.forward_context import current_moe_gemm_backend
from vllm.model_executor.layers.quantization.methods import LinearMethod, UnquantizedLinearMethod


def copy_checked(param: torch.Tensor, loaded: torch.Tensor, name: str = "") -> None:
    """Copy a checkpoint tensor into a parameter: shapes must match; byte formats are reinterpreted."""
    if tuple(loaded.shape) != tuple(param.shape):
        raise ValueError(f"shape mismatch for {name or 'parameter'}: checkpoint {tuple(loaded.shape)} "
                         f"vs model {tuple(param.shape)}")
    if param.dtype in (torch.uint8, torch.int8) and loaded.dtype in (torch.uint8, torch.int8, torch.float8_e8m0fnu):
        loaded = loaded.view(param.dtype)  # scale / packed bytes: reinterpret, never value-convert
    elif loaded.dtype == torch.float8_e8m0fnu:
        raise ValueError(f"{name}: e8m0 scale tensor loaded into a {param.dtype} parameter")
    param.data.copy_(loaded.to(param.dtype))


def _shard(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    if size == 1:
        return t
    n = t.shape[dim] // size
    return t.narrow(dim, rank * n, n)


class LinearBase(nn.Module):
    """y = x @ W^T through a quantization method; `shard_dim` is the TP-split weight dim (or None)."""

    shard_dim: int | None = None

    def __init__(self, in_features: int, out_features: int, method: LinearMethod | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.in_features, self.out_features = in_features, out_features
        self.method = method or UnquantizedLinearMethod()
        local_out, local_in = self._local_sizes()
        self.method.create_weights(self, local_out, local_in, dtype)
        for p in self.parameters(recurse=False):
            p.weight_loader = self.weight_loader

    def _local_sizes(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, name: str = "") -> None:
        if self.shard_dim is not None:
            loaded = _shard(loaded, self.shard_dim, self.tp_rank, self.tp_size)
        copy_checked(param, loaded, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return current_moe_gemm_backend().linear(x, self.method.quant_weight(self))


class ReplicatedLinear(LinearBase):
    """Same full weight on every rank."""


class ColumnParallelLinear(LinearBase):
    """Output features split across TP ranks; output stays sharded."""

    shard_dim = 0

    def _local_sizes(self):
        assert self.out_features % self.tp_size == 0
        return self.out_features // self.tp_size, self.in_features


class RowParallelLinear(LinearBase):
    """Input features split across TP ranks; partial outputs are all-reduced."""

    shard_dim = 1

    def _local_sizes(self):
        assert self.in_features % self.tp_size == 0
        return self.out_features, self.in_features // self.tp_size

    def forward(self, x):
        return tensor_model_parallel_all_reduce(super().forward(x))


class GroupedColumnLinear(ColumnParallelLinear):
    """Block-diagonal linear: input `[T, G, in_g]`, weight `[G*R, in_g]` viewed `[G, R, in_g]` -> `[T, G, R]`.

    DeepSeek V4's `wo_a` (spec §3.8): each group of heads has its own low-rank projection; TP
    splits whole groups across ranks.
    """

    def __init__(self, in_per_group: int, out_features: int, groups: int, method=None, dtype=torch.float32):
        self.groups = groups
        super().__init__(in_per_group, out_features, method, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[T, G_local, in_g]` -> `[T, G_local, R]`."""
        return current_moe_gemm_backend().linear(x, self.method.quant_weight(self), groups=self.groups // self.tp_size)
