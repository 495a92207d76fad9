"""Scheduler: which tokens of which requests run in the next step (vLLM V1's policy).

Token budget per step (`max_num_batched_tokens`) shared by running requests first (decodes and
unfinished prefill chunks, oldest first), then by waiting requests up to `max_num_seqs`; a prompt
longer than what is left of the budget is prefilled in chunks. When a running request cannot get
KV blocks, the newest running request is preempted (its blocks freed, recomputed later from its
prompt and outputs so far), so the oldest requests keep their progress. A new request starts
from the longest cached prefix its blocks allow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vllm.config.scheduler import SchedulerConfig
from vllm.core.kv_cache.manager import KVCacheManager
from vllm.engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    token_ids: list[int]
    """Tokens to run this step."""
    start_position: int
    """Position of token_ids[0] (= request.num_computed_tokens)."""
    is_prefill: bool
    """The chunk includes prompt tokens (prompt logprobs are taken from such chunks)."""
    block_tables: list[list[int]]
    """Per cache group, after this step's allocation."""

    @property
    def completes_sequence(self) -> bool:
        """The chunk reaches the last known token: its last row yields the next token."""
        return self.start_position + len(self.token_ids) >= self.request.num_tokens


@dataclass
class SchedulerOutput:
    """Scheduler -> model runner."""

    scheduled: list[ScheduledRequest]
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.scheduled)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add_request(self, req: Request) -> None:
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        chunks: list[tuple[Request, int]] = []
        preempted: list[str] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate_slots(req, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            if req.status == RequestStatus.PREEMPTED:
                break
            chunks.append((req, n))
            budget -= n
            i += 1
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            cached = None
            if req.num_computed_tokens == 0:
                hit, tables = self.kv.find_cached_prefix(req)
                cached = (hit, tables) if hit else None
            start = cached[0] if cached else req.num_computed_tokens
            n = min(req.num_tokens - start, budget)
            if not self.kv.allocate_slots(req, n, cached):
                break  # wait for running requests to free blocks
            self.waiting.popleft()
            if req.status == RequestStatus.WAITING:
                req.num_cached_tokens = start
            req.num_computed_tokens = start
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            chunks.append((req, n))
            budget -= n
        scheduled = []
        for req, n in chunks:
            start = req.num_computed_tokens
            scheduled.append(ScheduledRequest(req, req.all_token_ids()[start:start + n], start,
                                              start < len(req.prompt_token_ids),
                                              [list(t) for t in self.kv.block_tables(req.request_id)]))
        return SchedulerOutput(scheduled, preempted)

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update_after_step(self, out: SchedulerOutput) -> None:
        """The runner computed the scheduled tokens: advance, cache full blocks, drop out-of-window ones."""
        for s in out.scheduled:
            if s.request.status != RequestStatus.RUNNING:
                continue  # finished (aborted) while the step ran
            s.request.num_computed_tokens += len(s.token_ids)
            self.kv.commit_computed(s.request)

    def finish(self, req: Request, reason: str, stop_reason: int | str | None = None) -> None:
        """Finish a request (stop, length or abort) and free its blocks, wherever it is."""
        req.status, req.finish_reason, req.stop_reason = RequestStatus.FINISHED, reason, stop_reason
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.kv.free(req)
