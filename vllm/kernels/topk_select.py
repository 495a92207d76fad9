"""Row-wise top-k selection for the lightning indexer: which k of a query's scored entries it attends to.

`topk_slots_ref` is the torch reference (torch.topk, then the entries' slots). `topk_slots` selects in
Triton without sorting: a program holds one block of a row in registers and finds the k-th largest
score exactly, by building its bit pattern from the top down, two bits a step (three counts over the
block in one reduction), stopping as soon as exactly k scores lie at or above the bits found; then it
writes the entries above, and the first of those equal to the k-th, in entry order.
A row longer than one block is cut into blocks whose winners (k each) form a shorter row for the
next stage, so a long row is spread over programs instead of walked by one.
"""

from __future__ import annotations

import torch

from vllm.kernels._triton import next_pow2, tl, triton

BLOCK = 4096  # entries one program holds (32 a thread at 4 warps)


def topk_slots_ref(scores: torch.Tensor, k: int, entry_slots: torch.Tensor, query_req: torch.Tensor) -> torch.Tensor:
    """scores `[T, N]` fp32 (-inf = not a candidate), entry_slots `[B, N]`, query_req `[T]` ->
    `[T, k]` slots of each row's k best entries, best first; -1 where a row has fewer than k candidates."""
    top = scores.topk(k, dim=-1)
    slots = entry_slots[query_req].gather(1, top.indices)
    return torch.where(top.values > float("-inf"), slots, -1)


@triton.jit
def _add3(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@triton.jit
def _block_winners(x, valid, K):
    """Mask of the K largest of `x` where `valid` (all of them if fewer), ties at the K-th value
    broken by position."""
    bits = x.to(tl.uint32, bitcast=True)
    key = bits ^ tl.where((bits >> 31) != 0, 0xFFFFFFFF, 0x80000000)  # unsigned order = float order
    key = tl.where(valid, key, 0)  # below every threshold tried (those have a bit set)
    n_valid = tl.sum(valid.to(tl.int32), 0)
    kth = tl.zeros([], tl.uint32)
    count = tl.where(n_valid > K, n_valid, K)  # keys >= kth; at most K candidates: all of them win
    shift = 32
    while (shift > 0) & (count != K):  # kth's next two bits: the largest digit whose threshold keeps >= K keys
        shift -= 2
        step = tl.full([], 1, tl.uint32) << shift
        c1, c2, c3 = tl.reduce(((key >= (kth | step)).to(tl.int32),  # three counts in one reduction:
                                (key >= (kth | 2 * step)).to(tl.int32),  # one barrier round a step
                                (key >= (kth | 3 * step)).to(tl.int32)), 0, _add3)
        digit = (c1 >= K).to(tl.uint32) + (c2 >= K).to(tl.uint32) + (c3 >= K).to(tl.uint32)
        count = tl.where(digit == 3, c3, tl.where(digit == 2, c2, tl.where(digit == 1, c1, count)))
        kth = kth | (digit << shift)
    above = key > kth  # exactly K keys when the loop stopped early; every candidate when kth is 0
    ties = valid & (key == kth)
    return above | (ties & (tl.cumsum(ties.to(tl.int32), 0) <= K - tl.sum(above.to(tl.int32), 0)))


@triton.jit
def _topk_stage_kernel(val_ptr, idx_ptr, L, val_stride, out_val_ptr, out_idx_ptr, out_stride, K,
                       entry_ptr, entry_stride, req_ptr, HAS_IDX: tl.constexpr, FINAL: tl.constexpr,
                       BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (row t, block c): the K winners of entries [c*BLOCK, (c+1)*BLOCK) of row t. FINAL: their
    slots to out[t, :K] (-1 after the last); else (score, entry) pairs to out[t, c*K : (c+1)*K]
    (-inf after the last)."""
    t = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    offs = c * BLOCK + tl.arange(0, BLOCK)
    inb = offs < L
    x = tl.load(val_ptr + t * val_stride + offs, mask=inb, other=float("-inf"))
    if HAS_IDX:
        entry = tl.load(idx_ptr + t * val_stride + offs, mask=inb, other=0)
    else:
        entry = offs
    take = _block_winners(x, x > float("-inf"), K)
    pos = tl.cumsum(take.to(tl.int32), 0) - 1
    n_take = tl.sum(take.to(tl.int32), 0)
    rest = tl.arange(0, BLOCK_K)
    rest_mask = (rest >= n_take) & (rest < K)
    out = t * out_stride + c * K
    if FINAL:
        req = tl.load(req_ptr + t).to(tl.int64)
        slots = tl.load(entry_ptr + req * entry_stride + entry, mask=take, other=-1)
        tl.store(out_idx_ptr + out + pos, slots.to(tl.int64), mask=take)
        tl.store(out_idx_ptr + out + rest, tl.full([BLOCK_K], -1, tl.int64), mask=rest_mask)
    else:
        tl.store(out_val_ptr + out + pos, x, mask=take)
        tl.store(out_idx_ptr + out + pos, entry, mask=take)
        tl.store(out_val_ptr + out + rest, tl.full([BLOCK_K], float("-inf"), tl.float32), mask=rest_mask)


def _warps(block: int) -> int:
    return max(4, min(16, block // 1024))


def topk_slots(scores: torch.Tensor, k: int, entry_slots: torch.Tensor, query_req: torch.Tensor,
               block: int | None = None) -> torch.Tensor:
    """topk_slots_ref's result as a set per row: the same k entries up to ties at the k-th score, in
    entry order rather than best first. `block` (power of two, > 2k) caps the entries one program holds."""
    t, n = scores.shape
    assert scores.dtype == torch.float32 and scores.stride(1) == 1 and entry_slots.stride(1) == 1
    assert 0 < k <= n, f"k={k} must be in 1..{n} (the row length)"
    block = max(block or BLOCK, next_pow2(2 * k + 1))
    out = torch.empty(t, k, dtype=torch.long, device=scores.device)
    if t == 0:
        return out
    vals, idx, length = scores, None, n
    while True:
        b = min(block, next_pow2(length))
        chunks = triton.cdiv(length, b)
        final = chunks == 1
        nxt_v = out if final else torch.empty(t, chunks * k, dtype=torch.float32, device=scores.device)
        nxt_i = out if final else torch.empty(t, chunks * k, dtype=torch.int32, device=scores.device)
        _topk_stage_kernel[(t, chunks)](
            vals, scores if idx is None else idx, length, vals.stride(0), nxt_v, nxt_i, nxt_i.stride(0), k,
            entry_slots, entry_slots.stride(0), query_req, HAS_IDX=idx is not None, FINAL=final, BLOCK=b,
            BLOCK_K=next_pow2(k), num_warps=_warps(b))
        if final:
            return out
        vals, idx, length = nxt_v, nxt_i, chunks * k
