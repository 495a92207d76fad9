"""BlockPool: the blocks of one cache group, reference counts, LRU free queue and the prefix cache.

A freed block keeps its content hash and stays findable until it is handed out again
(least recently freed first), so a later request with the same prefix can take it back.
"""

from __future__ import annotations

from collections import OrderedDict


class BlockPool:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.cached: dict[bytes, int] = {}

    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free_queue):
            raise RuntimeError(f"asked for {n} blocks with {len(self.free_queue)} free")  # callers check first
        out = []
        for _ in range(n):
            b, _ = self.free_queue.popitem(last=False)
            self._evict(b)
            self.ref_cnt[b] = 1
            out.append(b)
        return out

    def lookup(self, h: bytes) -> int | None:
        return self.cached.get(h)

    def touch(self, blocks: list[int]) -> None:
        """Take a reference on cached blocks (found by `lookup`)."""
        for b in blocks:
            if self.ref_cnt[b] == 0:
                del self.free_queue[b]
            self.ref_cnt[b] += 1

    def free(self, blocks: list[int]) -> None:
        """Drop one reference each; unreferenced blocks join the free queue's tail (evicted last)."""
        for b in blocks:
            self.ref_cnt[b] -= 1
            assert self.ref_cnt[b] >= 0, f"block {b} freed twice"
            if self.ref_cnt[b] == 0:
                self.free_queue[b] = None

    def cache(self, block: int, h: bytes) -> None:
        """Register a full block's content hash (first writer wins for duplicates)."""
        if self.block_hash[block] is None and h not in self.cached:
            self.block_hash[block] = h
            self.cached[h] = block

    def _evict(self, b: int) -> None:
        h = self.block_hash[b]
        if h is not None:
            self.block_hash[b] = None
            if self.cached.get(h) == b:
                del self.cached[h]

    def reset_prefix_cache(self) -> None:
        for b in range(self.num_blocks):
            if self.ref_cnt[b] == 0:
                self._evict(b)
