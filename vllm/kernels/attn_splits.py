"""Splitting sparse attention's index lists across programs, and merging the splits' results.

With few queries a program per (query, head block) leaves SMs idle, so the attention kernels can
split each list: every split writes its normalized partial output and LSE (fp32), and one merge
launch combines them, adding the sink once. Shared by the portable kernel and the Hopper one.
"""

from __future__ import annotations

import torch

from vllm.kernels._triton import next_pow2, tl, triton


def pick_splits(num_programs: int, total: int, block_k: int, num_sms: int) -> int:
    """Split each index list so that about one program runs per multiprocessor, keeping >= 2 blocks
    per split. One program holds a [heads, 512] fp32 accumulator and fills an SM's registers, so a
    second wave costs more than the merge saves (H200: 64 heads at 64 / 128 requests, 2 / 1 splits,
    49 / 79 us, against 72 / 93 us when filling the GPU twice over)."""
    if num_programs >= num_sms or total <= 2 * block_k:
        return 1
    return max(1, min(num_sms // num_programs, total // (2 * block_k), 32))


def plan_splits(q: torch.Tensor, out: torch.Tensor, total: int, programs: int, block_k: int, width: int,
                num_splits: int | None):
    """(num_splits, split_len, part_o, part_lse) for `programs` programs a split over lists of `total`
    indices: splits whole blocks of block_k (pick_splits' count unless given); with several, the fp32
    partial outputs `[T*S*H, width]` and LSEs the merge reads (else `out`, unused)."""
    t, h, _ = q.shape
    if num_splits is None:
        num_splits = pick_splits(programs, total, block_k,
                                 torch.cuda.get_device_properties(q.device).multi_processor_count
                                 if q.is_cuda else 1)
    split_len = triton.cdiv(triton.cdiv(max(total, 1), num_splits), block_k) * block_k
    num_splits = triton.cdiv(max(total, 1), split_len)
    if num_splits == 1:
        return num_splits, split_len, out, out
    return (num_splits, split_len, torch.empty(t * num_splits * h, width, dtype=torch.float32, device=q.device),
            torch.empty(t * num_splits * h, dtype=torch.float32, device=q.device))


def merge_splits(part_o: torch.Tensor, part_lse: torch.Tensor, sink: torch.Tensor, out: torch.Tensor,
                 num_splits: int) -> None:
    """out[t, h] from the splits' (output, LSE) pairs and the sink (`_merge_splits_kernel`)."""
    t, h, d = out.shape
    _merge_splits_kernel[(t, h)](part_o, part_lse, sink, out, h, out.stride(0), out.stride(1), D=d,
                                 BLOCK_D=part_o.shape[1], NUM_SPLITS=num_splits, BLOCK_S=next_pow2(num_splits),
                                 num_warps=4)


@triton.jit
def _merge_splits_kernel(part_o_ptr, part_lse_ptr, sink_ptr, out_ptr, H, o_stride_t, o_stride_h,
                         D: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
                         BLOCK_S: tl.constexpr):
    """out[t, h] = sum_s exp(lse_s) o_s / (sum_s exp(lse_s) + exp(sink_h)), computed stably."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    rows = (t * NUM_SPLITS + s) * H + h
    lse = tl.load(part_lse_ptr + rows, mask=s < NUM_SPLITS, other=float("-inf"))
    sink = tl.load(sink_ptr + h)
    mf = tl.maximum(tl.max(lse, 0), sink)
    w = tl.exp(lse - mf)  # [BS]
    o = tl.load(part_o_ptr + rows[:, None] * BLOCK_D + offs_d[None, :], mask=(s < NUM_SPLITS)[:, None], other=0.0)
    out = tl.sum(o * w[:, None], 0) / (tl.sum(w, 0) + tl.exp(sink - mf))
    tl.store(out_ptr + t * o_stride_t + h * o_stride_h + offs_d, out.to(out_ptr.dtype.element_ty), mask=offs_d < D)
