"""Weight/activation quantization formats of DeepSeek V4 checkpoints (torch references)."""
