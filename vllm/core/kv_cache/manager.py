"""KVCacheManager: per-request block tables over every cache group, prefix caching by block hashes.

Each group keeps its own pool and its own block table per request (block k covers positions
[k*bt, (k+1)*bt) of the sequence, bt = the group's block_tokens). Windowed groups drop blocks
that fall wholly behind the lookback (table entry -1). A block that is full is registered
under the hash chain of the tokens up to its end: its content depends on nothing else, so any
request with the same token prefix may take it. What a prefix hit must find (docs/kv_cache.md):
every full-history block before the hit point, and in each windowed group the blocks its
lookback reads at the hit point (the sliding-window rows and the compressor carry-over rows).
"""

from __future__ import annotations

import hashlib
from array import array

from vllm.core.kv_cache.block_pool import BlockPool
from vllm.core.kv_cache.specs import KVCacheGroupSpec
from vllm.engine.request import Request

Tables = list[list[int]]


def _chain_hashes(tokens: list[int], bt: int, have: list[bytes], n_blocks: int) -> list[bytes]:
    """Extend `have` (hashes of blocks 0..) to `n_blocks`: h_k = H(h_{k-1}, tokens of block k)."""
    while len(have) < n_blocks:
        k = len(have)
        h = hashlib.blake2b(have[-1] if have else b"root", digest_size=16)
        h.update(array("q", tokens[k * bt:(k + 1) * bt]).tobytes())
        have.append(h.digest())
    return have


class KVCacheManager:
    def __init__(self, groups: list[KVCacheGroupSpec], num_blocks: list[int], enable_prefix_caching: bool):
        self.groups = groups
        self.pools = [BlockPool(n) for n in num_blocks]
        self.enable_prefix_caching = enable_prefix_caching
        self.tables: dict[str, Tables] = {}
        self._num_registered: dict[str, list[int]] = {}
        self._hashes: dict[str, dict[int, list[bytes]]] = {}
        self.prefix_queries = self.prefix_hits = 0
        """Prompt tokens looked up / found in the prefix cache (for hit-rate stats)."""

    # -- queries -------------------------------------------------------------------------------
    def block_tables(self, request_id: str) -> Tables:
        return self.tables[request_id]

    def usage(self) -> float:
        """Fraction of blocks in use (0..1), over all pools."""
        total = sum(p.num_blocks for p in self.pools)
        return 1.0 - sum(p.num_free for p in self.pools) / max(total, 1)

    def all_blocks_free(self) -> bool:
        return all(p.num_free == p.num_blocks for p in self.pools) and not self.tables

    # -- prefix cache --------------------------------------------------------------------------
    def _hashes_for(self, req: Request, bt: int, n_blocks: int) -> list[bytes]:
        per_req = self._hashes.setdefault(req.request_id, {})
        return _chain_hashes(req.all_token_ids(), bt, per_req.setdefault(bt, []), n_blocks)

    def find_cached_prefix(self, req: Request) -> tuple[int, Tables | None]:
        """Longest cached prefix a new request can resume from -> (tokens, block tables to take)."""
        if not self.enable_prefix_caching or req.sampling_params.prompt_logprobs is not None:
            return 0, None  # prompt logprobs need every prompt position's logits
        step = max(g.block_tokens for g in self.groups)
        limit = (req.num_tokens - 1) // step * step  # keep >= 1 token to compute: it yields the logits
        self.prefix_queries += req.num_tokens
        for g, pool in zip(self.groups, self.pools):
            if g.lookback is None:  # the full-history chain bounds the hit
                hashes = self._hashes_for(req, g.block_tokens, limit // g.block_tokens)
                n = 0
                while n < len(hashes) and pool.lookup(hashes[n]) is not None:
                    n += 1
                limit = min(limit, n * g.block_tokens // step * step)
        for p in range(limit, 0, -step):
            tables = self._tables_at(req, p)
            if tables is not None:
                self.prefix_hits += p
                return p, tables
        return 0, None

    def _tables_at(self, req: Request, p: int) -> Tables | None:
        tables = []
        for g, pool in zip(self.groups, self.pools):
            bt = g.block_tokens
            lo, hi = g.first_needed(p) // bt, p // bt
            hashes = self._hashes_for(req, bt, hi)
            blocks = [pool.lookup(h) for h in hashes[lo:hi]]
            if any(b is None for b in blocks):
                return None
            tables.append([-1] * lo + blocks)
        return tables

    # -- allocation ----------------------------------------------------------------------------
    def allocate_slots(self, req: Request, num_new_tokens: int, cached: tuple[int, Tables] | None = None) -> bool:
        """Make sure every row the next `num_new_tokens` write or read has a block; all or nothing.

        `cached`: a prefix hit from find_cached_prefix (the request resumes at its length).
        """
        start = cached[0] if cached else req.num_computed_tokens
        end = start + num_new_tokens
        tables = cached[1] if cached else self.tables.get(req.request_id) or [[] for _ in self.groups]
        missing: list[list[int]] = []
        for g, pool, table in zip(self.groups, self.pools, tables):
            lo, hi = g.first_needed(start) // g.block_tokens, -(-end // g.block_tokens)
            missing.append([k for k in range(lo, hi) if k >= len(table) or table[k] < 0])
            revived = sum(1 for b in table if b >= 0 and pool.ref_cnt[b] == 0) if cached else 0
            if len(missing[-1]) + revived > pool.num_free:
                return False
        for pool, table, miss in zip(self.pools, tables, missing):
            if cached:
                pool.touch([b for b in table if b >= 0])
            if miss:
                table.extend([-1] * (miss[-1] + 1 - len(table)))
                for k, b in zip(miss, pool.allocate(len(miss))):
                    table[k] = b
        if cached:
            self._num_registered[req.request_id] = [cached[0] // g.block_tokens for g in self.groups]
        self.tables[req.request_id] = tables
        return True

    def commit_computed(self, req: Request) -> None:
        """After a step: register newly full blocks for prefix caching, then release blocks that
        fell behind every windowed group's lookback."""
        tables = self.tables[req.request_id]
        done = req.num_computed_tokens
        registered = self._num_registered.setdefault(req.request_id, [0] * len(self.groups))
        for i, (g, pool, table) in enumerate(zip(self.groups, self.pools, tables)):
            bt = g.block_tokens
            full = min(done // bt, len(table))
            if self.enable_prefix_caching and full > registered[i]:
                hashes = self._hashes_for(req, bt, full)
                for k in range(registered[i], full):
                    if table[k] >= 0:
                        pool.cache(table[k], hashes[k])
                registered[i] = full
            if g.lookback is not None:
                lo = g.first_needed(done) // bt
                dropped = [b for b in table[:lo] if b >= 0]
                pool.free(dropped)
                table[:lo] = [-1] * min(lo, len(table))

    def free(self, req: Request) -> None:
        """Release every block of a finished, aborted or preempted request (tail blocks first, so
        they are evicted before the shared prefix)."""
        tables = self.tables.pop(req.request_id, None)
        self._num_registered.pop(req.request_id, None)
        self._hashes.pop(req.request_id, None)
        if tables is None:
            return
        for pool, table in zip(self.pools, tables):
            pool.free([b for b in reversed(table) if b >= 0])

    def reset_prefix_cache(self) -> None:
        for pool in self.pools:
            pool.reset_prefix_cache()
