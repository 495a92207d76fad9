"""Expert alignment for the fused MoE (`fused_moe`): (token, slot) pairs sorted by expert into
BLOCK_M-row blocks, each block one expert, -1 padding, in fixed-size tensors (no host sync).

`moe_align_ref` is the torch version, `moe_align` two Triton launches (a one-program layout pass:
expert histogram, block starts, block experts; then an atomic scatter). With `shared_expert` every
token gets one more pair, slot k, on the shared expert (id E); `routed_slot` / `pair_expert` say
where a pair's routed slot is stored and which expert it is, for these kernels and the GEMMs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vllm.kernels._triton import next_pow2, tl, triton


class MoEAlignment(NamedTuple):
    sorted_pairs: torch.Tensor
    """`[blocks * BLOCK_M]` int32: pair ids (token * slots + slot) grouped by expert, -1 = padding."""
    block_expert: torch.Tensor
    """`[blocks]` int32: the expert of each block, -1 = unused block (its programs exit)."""


def block_count_bound(pairs: int, num_experts: int, block_m: int) -> int:
    """ceil(P / block_m) + min(P, E) bounds Σ_e ceil(count_e / block_m): fixed sizes, no host sync."""
    return -(-pairs // block_m) + min(pairs, num_experts)


def with_shared(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """topk_ids with the shared expert (id num_experts) appended to every token: `[T, k + 1]`."""
    return torch.cat([topk_ids, torch.full_like(topk_ids[:, :1], num_experts)], 1)


def moe_align_ref(topk_ids: torch.Tensor, num_experts: int, block_m: int, shared_expert: bool = False) -> MoEAlignment:
    """Group the pairs by expert into block_m-row blocks (torch ops, stable order within an expert).
    `shared_expert`: every token has one more pair, slot k, on expert num_experts (the shared expert,
    always selected), as if topk_ids had that column; the layout then covers num_experts + 1 experts."""
    if shared_expert:
        topk_ids, num_experts = with_shared(topk_ids, num_experts), num_experts + 1
    flat = topk_ids.flatten().long()
    p = flat.numel()
    n_blocks = block_count_bound(p, num_experts, block_m)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would sync with the host
    blocks_per = (counts + block_m - 1) // block_m
    block_end = torch.cumsum(blocks_per, 0)
    row_start = torch.cumsum(counts, 0) - counts
    expert_sorted = flat[order]
    rank = torch.arange(p, device=flat.device) - row_start[expert_sorted]
    dest = (block_end - blocks_per)[expert_sorted] * block_m + rank
    sorted_pairs = torch.full((n_blocks * block_m,), -1, dtype=torch.int32, device=flat.device)
    sorted_pairs[dest] = order.to(torch.int32)
    b = torch.arange(n_blocks, device=flat.device)
    block_expert = torch.searchsorted(block_end, b, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return MoEAlignment(sorted_pairs, block_expert)


@triton.jit
def routed_slot(pair, ok, slots, SHARED: tl.constexpr):
    """Where each pair's routed slot sits in the `[T, k]` routing tensors, and whether it has one: with
    SHARED a token's `slots` pairs are its k = slots - 1 routed ones, then the shared expert's (which
    is stored nowhere)."""
    if SHARED:
        slot = pair % slots
        return (pair // slots) * (slots - 1) + slot, ok & (slot < slots - 1)
    return pair, ok


@triton.jit
def pair_expert(ids_ptr, pair, ok, slots, shared_id, SHARED: tl.constexpr):
    """The expert of each pair: from topk_ids, or `shared_id` for the shared expert's (SHARED)."""
    at, routed = routed_slot(pair, ok, slots, SHARED)
    e = tl.load(ids_ptr + at, mask=routed, other=0).to(tl.int32)
    return tl.where(routed, e, shared_id) if SHARED else e


@triton.jit
def _align_layout_kernel(ids_ptr, cursor_ptr, block_expert_ptr, sorted_ptr, P, slots, E, max_blocks, block_m,
                         SHARED: tl.constexpr, NB: tl.constexpr, CHUNK: tl.constexpr, BB: tl.constexpr):
    """One program: expert histogram, each expert's first block (its row cursor for the scatter),
    the expert of every block, and -1 in every row. (E counts the shared expert, the last, if SHARED.)"""
    counts = tl.zeros((NB,), dtype=tl.int32)
    for p0 in range(0, P, CHUNK):
        offs = p0 + tl.arange(0, CHUNK)
        ok = offs < P
        counts += tl.histogram(pair_expert(ids_ptr, offs, ok, slots, E - 1, SHARED), NB, mask=ok)
    blocks = (counts + block_m - 1) // block_m
    end = tl.cumsum(blocks, 0)  # bins past E hold no pairs: their end is the total
    bins = tl.arange(0, NB)
    tl.store(cursor_ptr + bins, (end - blocks) * block_m, mask=bins < E)
    for b0 in range(0, max_blocks, BB):
        b = b0 + tl.arange(0, BB)
        expert = tl.sum((end[None, :] <= b[:, None]).to(tl.int32), 1)  # experts whose blocks end by b
        tl.store(block_expert_ptr + b, tl.where(expert < E, expert, -1), mask=b < max_blocks)
    for r0 in range(0, max_blocks * block_m, CHUNK):
        r = r0 + tl.arange(0, CHUNK)
        tl.store(sorted_ptr + r, tl.full((CHUNK,), -1, tl.int32), mask=r < max_blocks * block_m)


@triton.jit
def _align_scatter_kernel(ids_ptr, cursor_ptr, sorted_ptr, P, slots, E, SHARED: tl.constexpr, CHUNK: tl.constexpr):
    """Each pair takes the next row of its expert (atomic cursor): order within an expert is
    arbitrary, which no result depends on (rows are computed independently, slots summed in order)."""
    offs = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
    ok = offs < P
    e = pair_expert(ids_ptr, offs, ok, slots, E - 1, SHARED)
    row = tl.atomic_add(cursor_ptr + e, 1, mask=ok)
    tl.store(sorted_ptr + row, offs.to(tl.int32), mask=ok)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, shared_expert: bool = False) -> MoEAlignment:
    """Triton `moe_align_ref` in two launches (layout, then scatter), graph-capturable; the rows of
    an expert may come in any order. The shared expert's pairs are made in the kernels (no copy of
    topk_ids with its column)."""
    assert topk_ids.dim() == 2 and topk_ids.is_contiguous() and not topk_ids.is_floating_point(), \
        "topk_ids must be a contiguous integer [T, k]"
    flat = topk_ids.flatten()
    slots = topk_ids.shape[1] + shared_expert
    num_experts += shared_expert
    p = topk_ids.shape[0] * slots
    n_blocks = block_count_bound(p, num_experts, block_m)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=flat.device)
    block_expert = torch.empty(n_blocks, dtype=torch.int32, device=flat.device)
    sorted_pairs = torch.empty(n_blocks * block_m, dtype=torch.int32, device=flat.device)
    if n_blocks:
        _align_layout_kernel[(1,)](flat, cursor, block_expert, sorted_pairs, p, slots, num_experts, n_blocks, block_m,
                                   SHARED=shared_expert, NB=next_pow2(num_experts), CHUNK=1024, BB=16, num_warps=8)
        _align_scatter_kernel[(triton.cdiv(p, 1024),)](flat, cursor, sorted_pairs, p, slots, num_experts,
                                                       SHARED=shared_expert, CHUNK=1024, num_warps=4)
    return MoEAlignment(sorted_pairs, block_expert)
