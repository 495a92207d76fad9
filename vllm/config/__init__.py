"""Engine configuration: frozen dataclasses, one file per concern."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.config.cache import CacheConfig
from vllm.config.device import DeviceConfig
from vllm.config.load import LoadConfig
from vllm.config.model import ModelConfig
from vllm.config.scheduler import SchedulerConfig


@dataclass(frozen=True)
class VllmConfig:
    model_config: ModelConfig
    load_config: LoadConfig = field(default_factory=LoadConfig)
    device_config: DeviceConfig = field(default_factory=DeviceConfig)
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    cache_config: CacheConfig = field(default_factory=CacheConfig)


__all__ = ["VllmConfig", "CacheConfig", "ModelConfig", "LoadConfig", "DeviceConfig", "SchedulerConfig"]
