"""Shared fixtures: tiny DeepSeek V4 checkpoints written once per session, and helpers."""

from __future__ import annotations

import pytest
import torch

from vllm.attention.backends.torch_backend import TorchAttentionBackend
from vllm.core.kv_cache.contiguous import SequenceKVCache
from vllm.forward_context import ForwardContext, set_forward_context
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


def run_model(model, ids: torch.Tensor, chunks: list[int] | None = None) -> torch.Tensor:
    """Logits `[T, V]` for one sequence, fed in the given chunk sizes (default: all at once)."""
    cache = SequenceKVCache.for_layers(model.config.sliding_window, model.cache_layout())
    chunks = chunks or [ids.shape[0]]
    assert sum(chunks) == ids.shape[0]
    outs, start = [], 0
    with torch.inference_mode(), set_forward_context(ForwardContext(cache.layers, TorchAttentionBackend())):
        for n in chunks:
            pos = torch.arange(start, start + n, device=ids.device)
            outs.append(model.compute_logits(model(ids[start:start + n], pos)))
            start += n
    return torch.cat(outs)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
