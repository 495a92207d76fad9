"""DeepSeek V4 attention (spec §3.4-3.8): low-rank q, one shared 512-d latent as K and V,
sliding window + compressed entries (all of them for HCA, indexer top-k for CSA), per-head sink,
inverse RoPE on the output, grouped low-rank output projection.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.layernorm import RMSNorm, rms_normalize
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    GroupedColumnLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.rotary import RotaryEmbedding, apply_rope
from vllm.model_executor.models.deepseek_v4.compressor import Compressor
from vllm.model_executor.models.deepseek_v4.config import CSA, DeepseekV4Config
from vllm.model_executor.models.deepseek_v4.indexer import Indexer
from vllm.model_executor.layers.quantization.methods import LinearMethod


class DeepseekV4Attention(nn.Module):
    def __init__(self, cfg: DeepseekV4Config, layer_id: int, layer_type: str, ratio: int, dtype: torch.dtype,
                 m: Callable[[], LinearMethod]):
        """`m` makes the linear method of the checkpoint's dense (FP8-or-not) projections."""
        super().__init__()
        d, h, g = cfg.head_dim, cfg.num_heads, cfg.o_groups
        self.layer_id, self.num_heads, self.head_dim = layer_id, h, d
        self.window, self.ratio, self.eps = cfg.sliding_window, ratio, cfg.rms_norm_eps
        self.scale = d**-0.5
        self.wq_a = ReplicatedLinear(cfg.hidden_size, cfg.q_lora_rank, m(), dtype)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps, dtype)
        self.wq_b = ColumnParallelLinear(cfg.q_lora_rank, h * d, m(), dtype)
        self.wkv = ReplicatedLinear(cfg.hidden_size, d, m(), dtype)
        self.kv_norm = RMSNorm(d, cfg.rms_norm_eps, dtype)
        self.wo_a = GroupedColumnLinear(h * d // g, g * cfg.o_lora_rank, g, m(), dtype)
        self.wo_b = RowParallelLinear(g * cfg.o_lora_rank, cfg.hidden_size, m(), dtype)
        self.attn_sink = nn.Parameter(torch.empty(h, dtype=torch.float32), requires_grad=False)
        self.rotary = RotaryEmbedding(cfg.rope_for(layer_type).inv_freq(cfg.rope_dim))
        self.compressor = (Compressor(cfg.hidden_size, d, ratio, layer_type == CSA, self.rotary, cfg.rms_norm_eps,
                                      dtype) if ratio else None)
        self.indexer = (Indexer(cfg.hidden_size, cfg.q_lora_rank, cfg.index_n_heads, cfg.index_head_dim,
                                cfg.index_topk, ratio, self.rotary, cfg.rms_norm_eps, dtype, m())
                        if layer_type == CSA else None)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ctx = get_forward_context()
        backend = ctx.attn_backend
        t = x.shape[0]
        cos, sin = self.rotary.cos_sin(positions)
        qr = self.q_norm(self.wq_a(x))  # [T, q_lora]
        q = rms_normalize(self.wq_b(qr).view(t, -1, self.head_dim), self.eps)  # weightless per-head norm
        q = apply_rope(q, cos, sin)  # [T, H, d]
        kv = apply_rope(self.kv_norm(self.wkv(x)), cos, sin)  # [T, d]

        # Order within a step (spec §3.8): window write -> compressor -> indexer -> attention.
        caches, meta = ctx.kv_caches[self.layer_id], ctx.attn_metadata
        caches.swa.write(kv, meta.swa_slots)
        sources = [(caches.swa, meta.window_slots)]
        if self.compressor is not None:
            cm = meta.compressed[(self.ratio, self.compressor.overlap)]
            caches.compressed.write(self.compressor(x, positions, caches.state, cm, backend), cm.new_entry_slots)
            if self.indexer is not None:
                chosen = self.indexer(x, qr, positions, cos, sin, caches, cm, meta.query_req, backend)
            else:
                chosen = cm.visible_slots(meta.query_req)
            sources.append((caches.compressed, chosen))

        o = backend.sparse_attention(q, sources, self.attn_sink, self.scale)  # [T, H, d]
        o = apply_rope(o, cos, sin, inverse=True)  # undo the rotation V carried on its rope dims
        o = self.wo_a(o.view(t, self.wo_a.groups, -1)).flatten(1)  # [T, G*R]
        return self.wo_b(o)
