"""KV cache storage for DeepSeek V4 layers."""
