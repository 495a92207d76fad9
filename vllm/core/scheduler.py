"""Scheduler: decides which tokens of which requests run in the next step.

Today: FCFS admission up to `max_num_seqs`; every running request gets one forward per step
(its whole remaining prompt, then one token per step). The token-budget scheduler with chunked
prefill and preemption replaces it behind the same SchedulerOutput contract.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from vllm.config.scheduler import SchedulerConfig
from vllm.engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    token_ids: list[int]
    """Tokens to run this step."""
    start_position: int
    """Position of token_ids[0] (= request.num_computed_tokens)."""
    is_prefill: bool


@dataclass
class SchedulerOutput:
    """Scheduler -> model runner."""

    scheduled: list[ScheduledRequest]


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._finished_ids: list[str] = []

    def add_request(self, req: Request) -> None:
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            req = self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
        scheduled = []
        for req in self.running:
            start = req.num_computed_tokens
            tokens = req.all_token_ids()[start:]
            scheduled.append(ScheduledRequest(req, tokens, start, is_prefill=start < len(req.prompt_token_ids)))
        return SchedulerOutput(scheduled)

    def take_finished_ids(self) -> list[str]:
        """Requests finished since the last call: their KV state can be freed."""
        ids, self._finished_ids = self._finished_ids, []
        return ids

    def update_after_step(self, out: SchedulerOutput) -> None:
        for s in out.scheduled:
            s.request.num_computed_tokens += len(s.token_ids)

    def finish(self, req: Request, reason: str, stop_reason: int | str | None = None) -> None:
        req.status, req.finish_reason, req.stop_reason = RequestStatus.FINISHED, reason, stop_reason
        if req in self.running:
            self.running.remove(req)
            self._finished_ids.append(req.request_id)
        elif req in self.waiting:
            self.waiting.remove(req)
            self._finished_ids.append(req.request_id)
