"""Request outputs in vLLM's shape: RequestOutput -> [CompletionOutput], logprobs as {id: Logprob}."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    """1-based rank of this token in the distribution."""
    decoded_token: str | None = None


SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None
    """'stop' | 'length' | 'abort' | None while running."""
    stop_reason: int | str | None = None
    """The stop string or stop token id that ended the completion (None for EOS / length)."""

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    """Set when a completion failed (its finish_reason is "error"); the engine serves the others."""
