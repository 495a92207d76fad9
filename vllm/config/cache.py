"""CacheConfig: how the KV cache is paged, stored and sized."""

from __future__ import annotations

from dataclasses import dataclass

KV_CACHE_DTYPES = ("auto", "fp8", "fp8_ds_mla")
CPU_DEFAULT_KV_CACHE_BYTES = 4 << 30  # vLLM's CPU backend default (VLLM_CPU_KVCACHE_SPACE=4)


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 256
    """Tokens per logical KV block (DeepSeek V4's kernels use 256). Must be a multiple of every
    compress ratio: a compressed block then holds block_size/ratio entries of the same tokens."""
    kv_cache_dtype: str = "auto"
    """'auto' (model dtype) or 'fp8' (= 'fp8_ds_mla': DeepSeek's 584-byte latent rows, spec §5.1)."""
    kv_cache_memory_bytes: int | None = None
    """KV cache budget in bytes. None: on GPU from gpu_memory_utilization after a profiling
    pass; on CPU 4 GiB. Never more than max_num_seqs full-length sequences need."""
    gpu_memory_utilization: float = 0.9
    """Fraction of the GPU's memory this engine may use (weights + activations + KV cache)."""
    enable_prefix_caching: bool = True
    """Reuse KV blocks of identical token prefixes across requests."""

    def __post_init__(self):
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes must be > 0, got {self.kv_cache_memory_bytes}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    @property
    def fp8(self) -> bool:
        return self.kv_cache_dtype != "auto"
