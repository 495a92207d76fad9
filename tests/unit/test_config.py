"""Both config.json forms normalise to the same DeepseekV4Config."""

from __future__ import annotations

import math

import pytest

from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec, hub_config, transformers_config
from vllm.model_executor.models.deepseek_v4.config import CSA, HCA, SLIDING, ConfigError, DeepseekV4Config, RopeConfig


def test_hub_and_transformers_forms_agree():
    spec = TinyModelSpec(layer_types=(SLIDING, CSA, HCA, CSA), hash_layers=(True, True, False, False))
    a = DeepseekV4Config.from_dict(hub_config(spec, 512))
    b = DeepseekV4Config.from_dict(transformers_config(spec, 512))
    assert a == b
    assert a.layer_types == (SLIDING, CSA, HCA, CSA) and a.compress_ratios == (0, 4, 8, 4)
    assert a.hash_layers == (True, True, False, False) and a.rope_dim == 16
    assert a.main_rope.yarn_factor is None and a.compress_rope.yarn_factor == 4.0


def test_flash_yarn_frequencies_follow_the_spec():
    # spec §3.5.2: base 160000, factor 16, original 65536 -> pairs 0..15 unchanged, 25..31 divided by 16.
    rope = RopeConfig(theta=160000.0, yarn_factor=16.0, original_max_position=65536)
    f = rope.inv_freq(64)
    plain = RopeConfig(theta=160000.0).inv_freq(64)
    assert all(math.isclose(f[i], plain[i]) for i in range(16))
    assert all(math.isclose(f[i], plain[i] / 16) for i in range(25, 32))
    assert all(plain[i] / 16 < f[i] < plain[i] for i in range(16, 25))


def test_flash_schedule_from_hub_ratios():
    cfg = hub_config(TinyModelSpec(), 512)
    cfg.update(num_hidden_layers=43, compress_ratios=[0, 0] + [4, 128] * 20 + [4, 0])
    c = DeepseekV4Config.from_dict(cfg)
    assert c.layer_types[:4] == (SLIDING, SLIDING, CSA, HCA) and c.layer_types[-1] == CSA
    assert len(c.layer_types) == 43


@pytest.mark.parametrize("edit,match", [
    ({"layer_types": ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]},
     "layer_types"),
    ({"mlp_layer_types": ["dense"] * 4}, "mlp_layer_types"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"n_shared_experts": 2}, "n_shared_experts"),
    ({"num_experts_per_tok": 99}, "num_experts_per_tok"),
])
def test_unsupported_values_name_the_field(edit, match):
    cfg = transformers_config(TinyModelSpec(), 512)
    cfg.update(edit)
    with pytest.raises(ConfigError, match=match):
        DeepseekV4Config.from_dict(cfg)


def test_missing_required_field():
    cfg = hub_config(TinyModelSpec(), 512)
    del cfg["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        DeepseekV4Config.from_dict(cfg)
