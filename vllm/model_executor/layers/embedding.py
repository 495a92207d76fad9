"""Vocab-parallel embedding and LM head (world size 1 today; the vocab dim is the TP shard dim)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm.model_executor.layers.linear import copy_checked


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int, dtype: torch.dtype):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.empty(vocab_size, dim, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = lambda p, t, name="": copy_checked(p, t, name)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class ParallelLMHead(VocabParallelEmbedding):
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[T, D]` -> fp32 `[T, V]` (the reference runs the head GEMM in fp32)."""
        return F.linear(hidden.float(), self.weight.float())
