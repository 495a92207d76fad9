"""Split a KV cache byte budget into blocks per group (and refuse configs that cannot run).

Windowed groups cost a fixed number of blocks per running sequence: they are reserved for
`max_num_seqs` sequences plus one step's worth of new tokens. Everything left goes to the
full-history groups, which all take one block per `block_size` tokens, so they share one block
count. A sequence of `max_model_len` tokens must fit, or start-up fails naming the longest
length that would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vllm.core.kv_cache.specs import KVCacheGroupSpec

logger = logging.getLogger("vllm.kv_cache")


@dataclass(frozen=True)
class KVCachePlan:
    num_blocks: list[int]
    """Per group, in the order of the specs."""
    num_tokens: int
    """Tokens of full-history cache (what `GPU KV cache size` reports)."""
    max_concurrency: float
    """Sequences of max_model_len that fit at once."""


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def window_blocks(g: KVCacheGroupSpec, max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """Blocks a windowed group needs: its lookback per sequence + the blocks one step writes."""
    return max_num_seqs * (g.live_blocks_per_seq() + 1) + _ceil(max_num_batched_tokens, g.block_tokens)


def plan_kv_cache(groups: list[KVCacheGroupSpec], budget: int, block_size: int, max_model_len: int,
                  max_num_seqs: int, max_num_batched_tokens: int) -> KVCachePlan:
    windowed = [g for g in groups if g.lookback is not None]
    full = [g for g in groups if g.lookback is None]
    reserve = {g.name: window_blocks(g, max_num_seqs, max_num_batched_tokens) for g in windowed}
    window_bytes = sum(reserve[g.name] * g.block_bytes for g in windowed)
    full_block_bytes = sum(g.block_bytes for g in full)
    blocks_per_seq = _ceil(max_model_len, block_size)
    if full:
        left = budget - window_bytes
        n_full = max(0, left // full_block_bytes)
        if n_full < blocks_per_seq:
            longest = n_full * block_size
            if longest < 1:
                raise ValueError(
                    f"The KV cache budget ({budget} bytes) is too small: the sliding-window and compressor "
                    f"state caches of max_num_seqs={max_num_seqs} sequences alone need {window_bytes} bytes. "
                    f"Lower max_num_seqs or raise kv_cache_memory_bytes / gpu_memory_utilization.")
            raise ValueError(
                f"max_model_len={max_model_len} needs {blocks_per_seq * full_block_bytes} bytes of KV cache per "
                f"sequence, but only {left} bytes are left after the sliding-window caches of "
                f"max_num_seqs={max_num_seqs} sequences ({window_bytes} bytes). The largest max_model_len that "
                f"fits is {longest}: set max_model_len <= {longest}, or raise kv_cache_memory_bytes / "
                f"gpu_memory_utilization.")
        n_full = min(n_full, max_num_seqs * blocks_per_seq)  # more could never be used at once
    else:
        n_full = 0
        if window_bytes > budget:
            raise ValueError(f"The KV cache budget ({budget} bytes) is too small for the sliding-window caches of "
                             f"max_num_seqs={max_num_seqs} sequences ({window_bytes} bytes). Lower max_num_seqs or "
                             f"raise kv_cache_memory_bytes / gpu_memory_utilization.")
    num_blocks = [n_full if g.lookback is None else reserve[g.name] for g in groups]
    total = sum(n * g.block_bytes for n, g in zip(num_blocks, groups))
    per_seq = blocks_per_seq * full_block_bytes + sum(g.live_blocks_per_seq() * g.block_bytes for g in windowed)
    concurrency = min(max_num_seqs, (total / per_seq) if per_seq else max_num_seqs)
    plan = KVCachePlan(num_blocks, n_full * block_size, concurrency)
    logger.info("KV cache: %d bytes in %s; KV cache size: %d tokens; maximum concurrency for %d tokens per "
                "request: %.2fx", total,
                ", ".join(f"{g.name}={n} blocks" for g, n in zip(groups, num_blocks)),
                plan.num_tokens, max_model_len, concurrency)
    return plan
