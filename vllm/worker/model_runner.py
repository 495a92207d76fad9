"""Model runner: owns the model and the per-request KV state; runs a SchedulerOutput.

One forward per scheduled request (the batched, paged runner comes with the cache manager).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm.attention.selector import get_attention_backend
from vllm.config import VllmConfig
from vllm.core.kv_cache.contiguous import SequenceKVCache
from vllm.core.scheduler import ScheduledRequest, SchedulerOutput
from vllm.forward_context import ForwardContext, set_forward_context
from vllm.model_executor.model_loader import get_model, resolve_model
from vllm.worker.sampler import SampledToken, Sampler, token_logprobs


@dataclass
class ModelRunnerOutput:
    """Model runner -> engine: per scheduled request id."""

    sampled: dict[str, SampledToken] = field(default_factory=dict)
    """Next token of requests whose scheduled tokens reached the end of their sequence."""
    prompt_logprobs: dict[str, list[tuple[int, float, int, list[tuple[int, float]]]]] = field(default_factory=dict)
    """Per prompt token i >= 1: (token id, logprob, rank, top-k) given tokens < i."""


class ModelRunner:
    def __init__(self, config: VllmConfig):
        mc = config.model_config
        self.device = config.device_config.torch_device()
        resolved = resolve_model(mc.model)
        self.dtype = mc.torch_dtype(resolved[1].torch_dtype)
        self.model, self.model_cfg = get_model(mc.model, self.dtype, self.device,
                                               dequantize=config.load_config.dequantize_weights,
                                               show_progress=config.load_config.show_progress, resolved=resolved)
        self.backend = get_attention_backend(self.device, config.device_config.attention_backend)
        self.sampler = Sampler(mc.seed)
        self.caches: dict[str, SequenceKVCache] = {}

    def free(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.caches.pop(rid, None)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        out = ModelRunnerOutput()
        for s in sched.scheduled:
            self._run_one(s, out)
        return out

    def _run_one(self, s: ScheduledRequest, out: ModelRunnerOutput) -> None:
        req = s.request
        cache = self.caches.get(req.request_id)
        if cache is None:
            cache = self.caches[req.request_id] = SequenceKVCache.for_layers(
                self.model_cfg.sliding_window, self.model.cache_layout())
        ids = torch.tensor(s.token_ids, dtype=torch.long, device=self.device)
        positions = torch.arange(s.start_position, s.start_position + len(s.token_ids), device=self.device)
        with set_forward_context(ForwardContext(cache.layers, self.backend)):
            hidden = self.model(ids, positions)
        params = req.sampling_params
        want_prompt_lp = s.is_prefill and params.prompt_logprobs is not None
        logits = self.model.compute_logits(hidden if want_prompt_lp else hidden[-1:])
        if want_prompt_lp:
            out.prompt_logprobs[req.request_id] = self._prompt_logprobs(logits, s, params.prompt_logprobs)
        if s.start_position + len(s.token_ids) >= req.num_tokens:
            out.sampled[req.request_id] = self.sampler.sample(logits[-1], params, req.generator,
                                                              banned=self._banned(req))

    @staticmethod
    def _banned(req) -> list[int] | None:
        """EOS and stop ids may not be drawn before min_tokens outputs."""
        p = req.sampling_params
        if len(req.output_token_ids) >= p.min_tokens:
            return None
        return list(set(p.stop_token_ids) | set(req.eos_token_ids if not p.ignore_eos else ()))

    @staticmethod
    def _prompt_logprobs(logits: torch.Tensor, s: ScheduledRequest, k: int):
        lps = torch.log_softmax(logits.float().cpu(), -1)
        result = []
        # Row i predicts the token after token_ids[i]; the chunk's last row predicts a new token.
        for i in range(len(s.token_ids) - 1):
            tok = s.token_ids[i + 1]
            lp, rank, top = token_logprobs(lps[i], tok, k)
            result.append((tok, lp, rank, top))
        return result
