"""SchedulerConfig: how many sequences and tokens run together in one step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    """Most sequences running at once."""
    max_num_batched_tokens: int = 8192
    """Most tokens (prefill chunks + decodes) in one forward; longer prompts are prefilled in chunks."""

    def __post_init__(self):
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
