"""`LLM`: offline batch inference with vLLM's constructor names."""

from __future__ import annotations

import itertools
from typing import Sequence

from tqdm import tqdm

from vllm.config import CacheConfig, DeviceConfig, LoadConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.engine.llm_engine import LLMEngine
from vllm.entrypoints.chat_utils import render_chat
from vllm.outputs import RequestOutput
from vllm.sampling_params import SamplingParams

PromptType = str | dict


class LLM:
    """Load a model once, then `generate` for many prompts.

    Args mirror vLLM: `model`, `tokenizer`, `dtype`, `seed`, `max_model_len`, `max_num_seqs`,
    `max_num_batched_tokens`, `block_size`, `kv_cache_dtype`, `kv_cache_memory_bytes`,
    `gpu_memory_utilization`, `enable_prefix_caching`, `skip_tokenizer_init`, `device`,
    `attention_backend`, `moe_backend`, `fuse_shared_experts`; plus `dequantize_weights` to run FP8/MXFP4 checkpoints with dense weights.
    Parallelism arguments other than 1 are rejected until TP lands.
    """

    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto", seed: int = 0,
                 max_model_len: int | None = None, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
                 block_size: int = 256, kv_cache_dtype: str = "auto", kv_cache_memory_bytes: int | None = None,
                 gpu_memory_utilization: float = 0.9, enable_prefix_caching: bool = True,
                 skip_tokenizer_init: bool = False,
                 device: str = "auto", attention_backend: str | None = None, moe_backend: str | None = None,
                 fuse_shared_experts: bool = True, dequantize_weights: bool = False,
                 tensor_parallel_size: int = 1, trust_remote_code: bool = False, enforce_eager: bool = False,
                 show_progress: bool = True):
        if tensor_parallel_size != 1:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size}: this engine runs on one device for now")
        config = VllmConfig(
            model_config=ModelConfig(model=model, tokenizer=tokenizer, dtype=dtype, seed=seed,
                                     max_model_len=max_model_len, skip_tokenizer_init=skip_tokenizer_init),
            load_config=LoadConfig(dequantize_weights=dequantize_weights, show_progress=show_progress),
            device_config=DeviceConfig(device=device, attention_backend=attention_backend, moe_backend=moe_backend,
                                       fuse_shared_experts=fuse_shared_experts),
            scheduler_config=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
            cache_config=CacheConfig(block_size=block_size, kv_cache_dtype=kv_cache_dtype,
                                     kv_cache_memory_bytes=kv_cache_memory_bytes,
                                     gpu_memory_utilization=gpu_memory_utilization,
                                     enable_prefix_caching=enable_prefix_caching),
        )
        self.llm_engine = LLMEngine(config)
        self._ids = itertools.count()

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, use_tqdm: bool = True,
             tools: list[dict] | None = None, chat_template_kwargs: dict | None = None,
             reasoning_effort: str | None = None, add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of messages) or several, rendered with
        DeepSeek V4's chat encoding (`chat_template_kwargs={"thinking": True}` for thinking mode)."""
        tok = self.llm_engine.tokenizer
        if tok is None:
            raise ValueError("LLM.chat needs a tokenizer; it is unavailable with skip_tokenizer_init=True")
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = []
        for conv in convs:
            r = render_chat(tok, conv, tools, chat_template_kwargs, reasoning_effort, add_generation_prompt)
            prompts.append({"prompt": r.prompt, "prompt_token_ids": r.prompt_token_ids})
        return self.generate(prompts, sampling_params, use_tqdm)

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (blocks in use stay)."""
        self.llm_engine.kv_cache_manager.reset_prefix_cache()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        engine = self.llm_engine
        order = []
        try:
            for prompt, p in zip(prompts, params):
                rid = str(next(self._ids))
                engine.add_request(rid, prompt, p)
                order.append(rid)
        except Exception:
            for rid in order:
                engine.abort_request(rid)
            raise
        done: dict[str, RequestOutput] = {}
        with tqdm(total=len(order), desc="Processed prompts", disable=not use_tqdm) as bar:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
        return [done[rid] for rid in order]
