"""Request: one sequence's state as the engine sees it (engine -> scheduler contract)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from vllm.outputs import PromptLogprobs, SampleLogprobs
from vllm.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    """Unique per sequence (`<index>_<parent id>` for the n>1 children)."""
    parent_id: str
    index: int
    """Which of the parent's n completions this is."""
    prompt: str | None
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int
    """Generation limit after applying max_model_len."""
    eos_token_ids: tuple[int, ...] = ()
    """Token ids that end generation unless `ignore_eos`."""
    generator: torch.Generator | None = None
    """Per-request sampling RNG when the request has a seed."""
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    logprobs: SampleLogprobs | None = None
    prompt_logprobs: PromptLogprobs | None = None
    cumulative_logprob: float = 0.0
    num_preemptions: int = 0
    num_cached_tokens: int = 0
    """Prompt tokens taken from the prefix cache when the request was first scheduled."""
    text: str = ""
    detokenizer: object | None = None
    """IncrementalDetokenizer of the output (created on the first token when there is a tokenizer)."""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None
    """Why the request failed (finish_reason "error")."""

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED
