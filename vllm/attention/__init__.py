"""Attention backends: the interface the model calls, a registry and a selector."""

from vllm.attention.backend import AttentionBackend
from vllm.attention.selector import get_attention_backend, registered_backends

__all__ = ["AttentionBackend", "get_attention_backend", "registered_backends"]
