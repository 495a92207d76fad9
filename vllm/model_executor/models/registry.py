"""Model registry: `architectures` / `model_type` in config.json -> (model class, config class)."""

from __future__ import annotations

from vllm.model_executor.models.deepseek_v4.config import ConfigError, DeepseekV4Config
from vllm.model_executor.models.deepseek_v4.model import DeepseekV4ForCausalLM

MODELS = {"DeepseekV4ForCausalLM": (DeepseekV4ForCausalLM, DeepseekV4Config)}
MODEL_TYPES = {"deepseek_v4": "DeepseekV4ForCausalLM"}


def resolve_model_class(raw_config: dict):
    archs = raw_config.get("architectures") or []
    for a in archs:
        if a in MODELS:
            return MODELS[a]
    mt = raw_config.get("model_type")
    if mt in MODEL_TYPES:
        return MODELS[MODEL_TYPES[mt]]
    raise ConfigError(f"config.json: architectures={archs} / model_type={mt!r} is not supported; "
                      f"supported architectures: {sorted(MODELS)}")
