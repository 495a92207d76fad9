"""Shared fixtures: tiny DeepSeek V4 checkpoints written once per session, and helpers."""

from __future__ import annotations

import math
import os

import torch

# Triton kernels run in Triton's CPU interpreter where there is no GPU; this must be set before
# the kernel modules are imported (triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from vllm.attention.backends.torch_backend import TorchAttentionBackend
from vllm.attention.metadata import BatchEntry, build_attention_metadata
from vllm.config.cache import CacheConfig
from vllm.core.kv_cache.paged_rows import allocate_layer_caches
from vllm.forward_context import ForwardContext, set_forward_context
from vllm.model_executor.layers.backends.torch_backend import TorchMoEGemmBackend
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec, write_tiny_checkpoint
from vllm.model_executor.models.deepseek_v4.config import CSA, HCA, SLIDING

# Layer schedules the parity tests cover: every attention kind, hash and top-k MoE, leading and
# non-leading hash layers, two HCA ratios and two windows.
SCHEDULES = {
    "swa-csa-hca-csa": TinyModelSpec(layer_types=(SLIDING, CSA, HCA, CSA), naming="transformers"),
    "csa-hca-hca-swa": TinyModelSpec(layer_types=(CSA, HCA, HCA, SLIDING), hash_layers=(True, False, True, False),
                                     hca_ratio=16, naming="transformers", seed=1),
    "hca-csa-w16": TinyModelSpec(layer_types=(HCA, CSA), hash_layers=(False, True), hca_ratio=12,
                                 sliding_window=16, index_topk=5, naming="transformers", seed=2),
}


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    made: dict = {}

    def make(spec: TinyModelSpec) -> str:
        if spec not in made:
            made[spec] = str(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), spec))
        return made[spec]

    return make


def run_model(model, ids: torch.Tensor, chunks: list[int] | None = None, kv_cache_dtype: str = "auto",
              moe_gemm=None) -> torch.Tensor:
    """Logits `[T, V]` for one sequence through the paged caches, fed in the given chunk sizes
    (default: all at once). Blocks are handed out in order and never freed. `moe_gemm`: the
    MoE/GEMM backend (default: the torch references)."""
    cfg = model.config
    block_size = math.lcm(16, *[r for r in cfg.compress_ratios[:cfg.num_layers] if r])
    groups = model.kv_cache_groups(CacheConfig(block_size=block_size, kv_cache_dtype=kv_cache_dtype))
    blocks = [-(-ids.shape[0] // g.block_tokens) for g in groups]
    caches = allocate_layer_caches(groups, blocks, cfg.num_layers, ids.device)
    tables = [list(range(n)) for n in blocks]
    chunks = chunks or [ids.shape[0]]
    assert sum(chunks) == ids.shape[0]
    outs, start = [], 0
    with torch.inference_mode():
        for n in chunks:
            meta = build_attention_metadata([BatchEntry(start, n, tables)], groups, cfg.sliding_window, block_size,
                                            ids.device)
            with set_forward_context(ForwardContext(caches, TorchAttentionBackend(), meta,
                                                    moe_gemm or TorchMoEGemmBackend())):
                outs.append(model.compute_logits(model(ids[start:start + n], meta.positions)))
            start += n
    return torch.cat(outs)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
