"""vLLM-shaped inference engine for DeepSeek V4."""

__version__ = "0.1.0"
