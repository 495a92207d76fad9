"""Process groups and communication wrappers. Single process today: world size 1, rank 0."""

from __future__ import annotations

import torch


def get_tensor_model_parallel_world_size() -> int:
    return 1


def get_tensor_model_parallel_rank() -> int:
    return 0


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over the TP group (identity at world size 1)."""
    return x
