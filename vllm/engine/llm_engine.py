"""LLMEngine: the step loop. add_request -> step() (schedule -> execute -> update) -> RequestOutputs."""

from __future__ import annotations

import logging

import torch

from vllm.config import VllmConfig
from vllm.core.kv_cache.manager import KVCacheManager
from vllm.core.kv_cache.sizing import plan_kv_cache
from vllm.core.scheduler import Scheduler
from vllm.engine.output_processor import OutputProcessor
from vllm.engine.request import Request
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.tokenizers.hf_tokenizer import Tokenizer
from vllm.worker.model_runner import ModelRunner

logger = logging.getLogger("vllm.engine")


class LLMEngine:
    def __init__(self, config: VllmConfig):
        self.config = config
        mc = config.model_config
        self.tokenizer = None if mc.skip_tokenizer_init else Tokenizer(mc.tokenizer or mc.model)
        self.runner = ModelRunner(config)
        cfg = self.runner.model_cfg
        self.max_model_len = mc.max_model_len or cfg.max_position_embeddings
        if self.max_model_len > cfg.max_position_embeddings:
            raise ValueError(f"max_model_len={self.max_model_len} exceeds the model's max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        eos = set(cfg.eos_token_id)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(eos))
        self.kv_cache_manager = self._init_kv_cache(config)
        self.scheduler = Scheduler(config.scheduler_config, self.kv_cache_manager)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.requests: dict[str, list[Request]] = {}  # parent id -> its n sequences

    def _init_kv_cache(self, config: VllmConfig) -> KVCacheManager:
        """Size the KV cache (fails here if max_model_len cannot fit), allocate it, build the manager."""
        cc, sc = config.cache_config, config.scheduler_config
        groups = self.runner.kv_groups
        plan = plan_kv_cache(groups, self.runner.kv_cache_budget(self.max_model_len), cc.block_size,
                             self.max_model_len, sc.max_num_seqs, sc.max_num_batched_tokens)
        self.kv_cache_plan = plan
        self.runner.initialize_kv_cache(plan.num_blocks)
        return KVCacheManager(groups, plan.num_blocks, cc.enable_prefix_caching)

    def encode_prompt(self, prompt: str | dict) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = list(prompt["prompt_token_ids"])
                return prompt.get("prompt"), ids
            prompt = prompt.get("prompt")
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt is a string or {{'prompt_token_ids': [...]}}, got {type(prompt).__name__}")
        if self.tokenizer is None:
            raise ValueError("text prompts need a tokenizer; with skip_tokenizer_init=True pass "
                             "{'prompt_token_ids': [...]}")
        return prompt, self.tokenizer.encode(prompt)

    def add_request(self, request_id: str, prompt: str | dict, params: SamplingParams) -> None:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, ids = self.encode_prompt(prompt)
        self._validate_prompt(ids)
        room = self.max_model_len - len(ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        if params.prompt_logprobs is not None and params.n > 1:
            raise ValueError("prompt_logprobs with n > 1 is not supported; request n=1")
        children = []
        for i in range(params.n):
            gen = None if params.seed is None else torch.Generator().manual_seed(params.seed + i)
            children.append(Request(f"{i}_{request_id}" if params.n > 1 else request_id, request_id, i, text,
                                    ids, params, max_tokens, self.eos_token_ids, gen))
        self.requests[request_id] = children
        for r in children:
            self.scheduler.add_request(r)

    def _validate_prompt(self, ids: list[int]) -> None:
        vocab = self.runner.model_cfg.vocab_size
        if not ids:
            raise ValueError("The prompt is empty: it must contain at least one token.")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                             f"{self.max_model_len}. Make sure that `max_model_len` is no smaller than the number "
                             f"of text tokens plus one output token.")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"Token id {bad[0]} is out of vocabulary (vocab_size={vocab}).")

    def abort_request(self, request_id: str) -> None:
        for r in self.requests.pop(request_id, []):
            if not r.is_finished:
                self.scheduler.finish(r, "abort")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """Run one engine step; -> outputs of the requests that made progress (finished ones included).

        A failure confined to one request (its logits, sampling, detokenization) finishes that
        request with finish_reason "error" (message in `RequestOutput.error`); a failing forward
        pass raises, since every scheduled request's KV state is then in doubt."""
        sched = self.scheduler.schedule()
        result = self.runner.execute(sched)
        self.scheduler.update_after_step(sched)
        touched: dict[str, None] = {}
        for s in sched.scheduled:
            req = s.request
            req.error = result.failed.get(req.request_id)
            if req.error is None:
                try:
                    if req.request_id in result.prompt_logprobs:
                        self.output_processor.add_prompt_logprobs(req, s.start_position + 1,
                                                                  result.prompt_logprobs[req.request_id])
                    tok = result.sampled.get(req.request_id)
                    if tok is None:
                        continue
                    done = self.output_processor.append_token(req, tok)
                except Exception as e:  # noqa: BLE001 - fail this request, keep serving the others
                    logger.exception("output processing failed for request %s", req.request_id)
                    req.error = f"{type(e).__name__}: {e}"
            if req.error is not None:
                done = ("error", None)
            if done is not None:
                self.scheduler.finish(req, *done)
            touched[req.parent_id] = None
        outputs = []
        for pid in touched:
            children = self.requests[pid]
            out = OutputProcessor.make_output(pid, children)
            outputs.append(out)
            if out.finished:
                del self.requests[pid]
        return outputs
