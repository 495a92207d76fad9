"""DeepSeek V4 model: embed -> hc streams -> blocks (attention + MoE under mHC) -> hc_head -> norm -> head."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vllm.config.cache import CacheConfig
from vllm.core.kv_cache.specs import KVCacheGroupSpec
from vllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.layers.quantization.methods import LinearMethod, get_linear_method
from vllm.model_executor.models.deepseek_v4.attention import DeepseekV4Attention
from vllm.model_executor.models.deepseek_v4.config import SLIDING, DeepseekV4Config
from vllm.model_executor.models.deepseek_v4.kv_spec import kv_cache_groups
from vllm.model_executor.models.deepseek_v4.mhc import HyperConnection, HyperHead
from vllm.model_executor.models.deepseek_v4.moe import DeepseekV4MoE


class DeepseekV4Block(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, layer_id: int, layer_type: str, ratio: int, is_hash: bool,
                 dtype: torch.dtype, dense: Callable[[], LinearMethod], expert: Callable[[], LinearMethod]):
        super().__init__()
        hc = lambda: HyperConnection(cfg.hc_mult, cfg.hidden_size, cfg.hc_sinkhorn_iters,  # noqa: E731
                                     cfg.hc_eps, cfg.rms_norm_eps)
        self.hc_attn, self.hc_ffn = hc(), hc()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.attn = DeepseekV4Attention(cfg, layer_id, layer_type, ratio, dtype, dense)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.ffn = DeepseekV4MoE(cfg, is_hash, dense, expert, dtype)

    def forward(self, streams: torch.Tensor, positions: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        x, post, comb = self.hc_attn.pre(streams)
        streams = self.hc_attn.post(self.attn(self.attn_norm(x), positions), streams, post, comb)
        x, post, comb = self.hc_ffn.pre(streams)
        return self.hc_ffn.post(self.ffn(x, input_ids, self.ffn_norm), streams, post, comb)


class DeepseekV4MTPBlock(DeepseekV4Block):
    """The next-token-prediction block (`mtp.N.*`, spec §3.11): a sliding-window block with its own
    input projections, norms and hc_head. Its weights are loaded and kept for speculative decoding."""

    def __init__(self, cfg: DeepseekV4Config, layer_id: int, dtype: torch.dtype, dense, expert):
        super().__init__(cfg, layer_id, SLIDING, 0, False, dtype, dense, expert)
        d = cfg.hidden_size
        self.e_proj = ReplicatedLinear(d, d, dense(), dtype)
        self.h_proj = ReplicatedLinear(d, d, dense(), dtype)
        self.enorm = RMSNorm(d, cfg.rms_norm_eps, dtype)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps, dtype)
        self.norm = RMSNorm(d, cfg.rms_norm_eps, dtype)
        self.hc_head = HyperHead(cfg.hc_mult, d, cfg.hc_eps, cfg.rms_norm_eps)


class DeepseekV4ForCausalLM(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, dtype: torch.dtype, dequantized: bool = False):
        """`dequantized`: build plain weights (the loader dequantizes FP8/MXFP4 checkpoint tensors)."""
        super().__init__()
        self.config, self.dtype = cfg, dtype
        q = None if dequantized else cfg.quant
        dense = lambda: get_linear_method("fp8" if q else None, q.weight_block if q else (128, 128))  # noqa: E731
        expert = lambda: get_linear_method(q.expert_dtype if q else None,  # noqa: E731
                                           q.weight_block if q else (128, 128))
        self.embed = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = nn.ModuleList(
            DeepseekV4Block(cfg, i, cfg.layer_types[i], cfg.compress_ratios[i], cfg.hash_layers[i], dtype, dense,
                            expert)
            for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.hc_head = HyperHead(cfg.hc_mult, cfg.hidden_size, cfg.hc_eps, cfg.rms_norm_eps)
        self.head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, dtype)
        if cfg.tie_word_embeddings:
            self.head.weight = self.embed.weight
        self.mtp = nn.ModuleList(DeepseekV4MTPBlock(cfg, cfg.num_layers + i, dtype, dense, expert)
                                 for i in range(cfg.num_nextn_predict_layers))

    def kv_cache_groups(self, cache_config: CacheConfig) -> list[KVCacheGroupSpec]:
        """The paged caches the main layers need (MTP layers join them with speculative decoding)."""
        return kv_cache_groups(self.config, cache_config, self.dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions `[T]` (the step's tokens of all requests, flattened) -> final hidden `[T, D]`."""
        h = self.embed(input_ids)
        streams = h.unsqueeze(1).expand(-1, self.config.hc_mult, -1).contiguous()  # [T, hc, D]
        for layer in self.layers:
            streams = layer(streams, positions, input_ids)
        return self.norm(self.hc_head(streams))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head.compute_logits(hidden)
