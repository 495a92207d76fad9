"""AsyncLLM: the engine behind the server. One background thread runs LLMEngine.step(); each
request streams its RequestOutputs to an asyncio queue on the caller's event loop.

Adding and aborting take the same lock as a step, so requests come and go between steps. A
request whose consumer goes away (client disconnect, cancelled task) is aborted and its KV blocks
freed. A request that fails on its own raises RequestFailedError to its consumer only. If a step
raises, the engine is marked dead: every waiting consumer gets the error and `/health` reports 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import AsyncIterator

from vllm.config import VllmConfig
from vllm.engine.llm_engine import LLMEngine
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

logger = logging.getLogger("vllm.async_llm")


class EngineDeadError(RuntimeError):
    pass


class RequestFailedError(RuntimeError):
    """One request failed inside the engine (finish_reason "error"); the engine serves the others."""


@dataclass
class EngineStats:
    """Counters and latency samples for /metrics (seconds)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: Counter = field(default_factory=Counter)
    """Finished completions by finish reason."""
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    start: float
    first_token: float | None = None
    tokens: int = 0


class AsyncLLM:
    def __init__(self, config: VllmConfig):
        self.engine = LLMEngine(config)
        self.stats = EngineStats()
        self.dead: BaseException | None = None
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._stop = False
        self._streams: dict[str, _Stream] = {}
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    # -- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                busy = self.engine.has_unfinished_requests()
            if not busy:
                self._work.wait(0.1)
                self._work.clear()
                continue
            try:
                with self._lock:
                    outputs = self.engine.step()
            except BaseException as e:  # noqa: BLE001 - any failure kills the engine; consumers are told
                logger.exception("engine step failed; the engine is dead")
                self.dead = e
                for rid, s in list(self._streams.items()):
                    s.loop.call_soon_threadsafe(s.queue.put_nowait, EngineDeadError(f"engine failed: {e!r}"))
                return
            now = time.monotonic()
            for out in outputs:
                s = self._streams.get(out.request_id)
                if s is None:
                    continue
                self._record(s, out, now)
                item = out if out.error is None else RequestFailedError(f"request {out.request_id} failed: {out.error}")
                s.loop.call_soon_threadsafe(s.queue.put_nowait, item)

    def _record(self, s: _Stream, out: RequestOutput, now: float) -> None:
        n = sum(len(c.token_ids) for c in out.outputs)
        if n > s.tokens:
            if s.first_token is None:
                s.first_token = now
                self.stats.ttft.append(now - s.start)
            self.stats.generation_tokens += n - s.tokens
            s.tokens = n
        if out.finished:
            self.stats.e2e.append(now - s.start)
            if s.tokens > 1 and s.first_token is not None:
                self.stats.tpot.append((now - s.first_token) / (s.tokens - 1))
            self.stats.finished.update(c.finish_reason or "abort" for c in out.outputs)

    # -- requests --------------------------------------------------------------------------------
    async def generate(self, prompt: str | dict, params: SamplingParams, request_id: str) -> AsyncIterator[RequestOutput]:
        """Yield the request's cumulative outputs until it finishes. Raises ValueError for bad input
        (before anything is yielded), RequestFailedError if this request fails and EngineDeadError if
        the engine fails."""
        if self.dead is not None:
            raise EngineDeadError(f"engine is dead: {self.dead!r}")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), time.monotonic())
        self._streams[request_id] = stream
        finished = False
        try:
            with self._lock:
                self.engine.add_request(request_id, prompt, params)
                self.stats.prompt_tokens += len(self.engine.requests[request_id][0].prompt_token_ids)
            self._work.set()
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished and self.dead is None:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self.engine.abort_request(request_id)

    def queue_state(self) -> tuple[int, int, float]:
        """(running, waiting, KV cache usage 0..1)."""
        with self._lock:
            sched = self.engine.scheduler
            return len(sched.running), len(sched.waiting), self.engine.kv_cache_manager.usage()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop = True
        self._work.set()
        self._thread.join(timeout)
