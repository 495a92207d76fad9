"""Model runner: owns the model and the paged KV tensors; runs one batched forward per step.

Every scheduled token of every request (prefill chunks and decodes together) goes through one
forward; attention metadata (slots, windows, compressed candidates) is built once per step.
Logits are computed only for rows that are sampled or need prompt logprobs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from vllm.attention.metadata import BatchEntry, build_attention_metadata
from vllm.attention.selector import get_attention_backend
from vllm.model_executor.layers.backends.selector import get_moe_gemm_backend
from vllm.config import VllmConfig
from vllm.config.cache import CPU_DEFAULT_KV_CACHE_BYTES
from vllm.core.kv_cache.paged_rows import LayerCaches, allocate_layer_caches
from vllm.core.scheduler import ScheduledRequest, SchedulerOutput
from vllm.forward_context import ForwardContext, set_forward_context
from vllm.model_executor.model_loader import get_model, resolve_model
from vllm.worker.sampler import SampledToken, Sampler, token_logprobs

logger = logging.getLogger("vllm.worker")


@dataclass
class ModelRunnerOutput:
    """Model runner -> engine: per scheduled request id."""

    sampled: dict[str, SampledToken] = field(default_factory=dict)
    """Next token of requests whose scheduled tokens reached the end of their sequence."""
    prompt_logprobs: dict[str, list[tuple[int, float, int, list[tuple[int, float]]]]] = field(default_factory=dict)
    """Per prompt position p+1 covered by this chunk: (token id, logprob, rank, top-k) given tokens <= p."""
    failed: dict[str, str] = field(default_factory=dict)
    """Requests whose own post-forward work failed (non-finite logits, sampling error): why. Others go on."""


class ModelRunner:
    def __init__(self, config: VllmConfig):
        mc = config.model_config
        self.config = config
        self.device = config.device_config.torch_device()
        resolved = resolve_model(mc.model)
        self.dtype = mc.torch_dtype(resolved[1].torch_dtype)
        self.model, self.model_cfg = get_model(mc.model, self.dtype, self.device,
                                               dequantize=config.load_config.dequantize_weights,
                                               show_progress=config.load_config.show_progress, resolved=resolved)
        self.backend = get_attention_backend(self.device, config.device_config.attention_backend,
                                             config.cache_config.kv_cache_dtype)
        dc = config.device_config
        formats = frozenset(m.method.fmt for m in self.model.modules() if hasattr(m, "method"))
        self.moe_gemm = get_moe_gemm_backend(self.device, dc.moe_backend, formats, dc.fuse_shared_experts)
        self.sampler = Sampler(mc.seed)
        self.kv_groups = self.model.kv_cache_groups(config.cache_config)
        self.kv_caches: list[LayerCaches] = []

    # -- KV cache --------------------------------------------------------------------------------
    def kv_cache_budget(self, max_model_len: int) -> int:
        """Bytes the KV cache may take: the configured size, else what the GPU has left after a
        profiling forward of one full step, else the CPU default."""
        cc = self.config.cache_config
        if cc.kv_cache_memory_bytes is not None:
            return cc.kv_cache_memory_bytes
        if self.device.type != "cuda":
            return CPU_DEFAULT_KV_CACHE_BYTES
        return self._profile_budget(max_model_len)

    def initialize_kv_cache(self, num_blocks: list[int]) -> None:
        self.kv_caches = allocate_layer_caches(self.kv_groups, num_blocks, self.model_cfg.num_layers, self.device,
                                               self.backend.fp8_insert)

    @torch.inference_mode()
    def _profile_budget(self, max_model_len: int) -> int:
        n = min(self.config.scheduler_config.max_num_batched_tokens, max_model_len)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        weights = torch.cuda.memory_allocated(self.device)
        blocks = [-(-n // g.block_tokens) + 1 for g in self.kv_groups]
        caches = allocate_layer_caches(self.kv_groups, blocks, self.model_cfg.num_layers, self.device,
                                       self.backend.fp8_insert)
        entry = BatchEntry(0, n, [list(range(b)) for b in blocks])
        ids = torch.randint(0, self.model_cfg.vocab_size, (n,), device=self.device)
        self._forward(ids, [entry], caches)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - weights
        del caches
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        non_torch = max(0, (total - free) - torch.cuda.memory_reserved(self.device))
        util = self.config.cache_config.gpu_memory_utilization
        budget = int(total * util) - weights - peak - non_torch
        logger.info("memory profile: weights %.2f GiB, peak activations (%d tokens) %.2f GiB, non-torch %.2f GiB, "
                    "KV cache budget %.2f GiB at gpu_memory_utilization=%.2f", weights / 2**30, n, peak / 2**30,
                    non_torch / 2**30, budget / 2**30, util)
        if budget <= 0:
            raise ValueError(f"No GPU memory is left for the KV cache at gpu_memory_utilization={util} (weights "
                             f"{weights / 2**30:.2f} GiB, activations {peak / 2**30:.2f} GiB): raise "
                             f"gpu_memory_utilization or lower max_num_batched_tokens")
        return budget

    # -- one step --------------------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, entries: list[BatchEntry], caches: list[LayerCaches]) -> torch.Tensor:
        meta = build_attention_metadata(entries, self.kv_groups, self.model_cfg.sliding_window,
                                        self.config.cache_config.block_size, self.device)
        with set_forward_context(ForwardContext(caches, self.backend, meta, self.moe_gemm)):
            return self.model(ids, meta.positions)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        out = ModelRunnerOutput()
        if not sched.scheduled:
            return out
        entries = [BatchEntry(s.start_position, len(s.token_ids), s.block_tables) for s in sched.scheduled]
        ids = torch.tensor([t for s in sched.scheduled for t in s.token_ids], dtype=torch.long, device=self.device)
        hidden = self._forward(ids, entries, self.kv_caches)

        rows, spans, offset = [], [], 0  # which hidden rows need logits, and each request's slice of them
        for s in sched.scheduled:
            n = len(s.token_ids)
            if self._wants_prompt_logprobs(s):
                wanted = range(n)
            else:
                wanted = range(n - 1, n) if s.completes_sequence else range(0)
            spans.append((len(rows), len(wanted)))
            rows.extend(offset + i for i in wanted)
            offset += n
        if not rows:
            return out
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)]).float().cpu()
        for s, (first, count) in zip(sched.scheduled, spans):
            if count == 0:
                continue
            req, mine = s.request, logits[first:first + count]
            try:
                if not torch.isfinite(mine).all():
                    raise FloatingPointError("the model produced non-finite logits for this request")
                if self._wants_prompt_logprobs(s):
                    out.prompt_logprobs[req.request_id] = self._prompt_logprobs(mine, s,
                                                                                req.sampling_params.prompt_logprobs)
                if s.completes_sequence:
                    row = mine[-1]
                    for proc in req.sampling_params.logits_processors or ():
                        row = proc(req.output_token_ids, row)
                    out.sampled[req.request_id] = self.sampler.sample(row, req.sampling_params, req.generator,
                                                                      banned=self._banned(req))
            except Exception as e:  # noqa: BLE001 - one request's failure must not take down the batch
                logger.exception("request %s failed after the forward pass", req.request_id)
                out.prompt_logprobs.pop(req.request_id, None)
                out.failed[req.request_id] = f"{type(e).__name__}: {e}"
        return out

    @staticmethod
    def _wants_prompt_logprobs(s: ScheduledRequest) -> bool:
        return s.is_prefill and s.request.sampling_params.prompt_logprobs is not None

    @staticmethod
    def _banned(req) -> list[int] | None:
        """EOS and stop ids may not be drawn before min_tokens outputs."""
        p = req.sampling_params
        if len(req.output_token_ids) >= p.min_tokens:
            return None
        return list(set(p.stop_token_ids) | set(req.eos_token_ids if not p.ignore_eos else ()))

    @staticmethod
    def _prompt_logprobs(logits: torch.Tensor, s: ScheduledRequest, k: int):
        """Row i (position start+i) scores the prompt token at start+i+1, while that is a prompt token."""
        lps = torch.log_softmax(logits, -1)
        prompt = s.request.prompt_token_ids
        result = []
        for i in range(len(s.token_ids)):
            pos = s.start_position + i + 1
            if pos >= len(prompt):
                break
            lp, rank, top = token_logprobs(lps[i], prompt[pos], k)
            result.append((prompt[pos], lp, rank, top))
        return result
