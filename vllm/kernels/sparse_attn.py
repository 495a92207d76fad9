"""Sparse MLA attention with a per-head sink over index lists (spec §3.8).

Each query attends to the KV rows its index lists name in one or more sources (the sliding-
window rows and the compressed entries, as FlashMLA's `k_cache` + `extra_k_cache`), -1 = skip;
one softmax over the union, the sink adding exp(sink_h) to the denominator only. K and V are
the same latent row. A source is a `[N, D]` tensor or paged rows with `.gather(slots)`.

`sparse_attn_ref` is the torch reference; `sparse_attn` the Triton launcher: one program per
(query, head block, part of the output channels, split of the index list) with online softmax,
fp8_ds_mla pages dequantized in-kernel; with several splits a second kernel merges the partial
(output, LSE) pairs and adds the sink once. With 2 parts, two programs share a head block: each
scores over all channels but accumulates only its half, halving the [heads, 512] fp32
accumulator that otherwise fills an SM's registers (more programs in flight where a small batch
leaves SMs idle). fp8_ds_mla rows are dequantized NoPE tiles plus their bf16 RoPE channels as a
separate `[BK, 64]` tile and accumulator (a masked full-width tile cost registers for 512 channels).
"""

from __future__ import annotations

import functools
from typing import Iterator, NamedTuple, Sequence

import torch

from vllm.kernels._triton import dot_precision, launch_first_fitting, next_pow2, tl, triton
from vllm.kernels.attn_splits import merge_splits, plan_splits

QUERY_CHUNK = 256  # bounds the [chunk, K, D] gather of the reference


def gather_rows(source, idx: torch.Tensor) -> torch.Tensor:
    """Rows `[..., D]` of `source` at `idx` (any shape; -1 -> zeros)."""
    if isinstance(source, torch.Tensor):
        rows = source[idx.clamp(min=0)]
        return torch.where((idx >= 0)[..., None], rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
    return source.gather(idx)


def sparse_attn_ref(q: torch.Tensor, sources: Sequence[tuple[object, torch.Tensor]], sink: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """q `[T, H, D]`; sources: (kv rows, indices `[T, K_i]`); sink `[H]` fp32 -> `[T, H, D]` in q.dtype.

    A query whose indices are all invalid returns zeros (the sink takes all the mass).
    """
    assert q.dim() == 3 and all(i.dim() == 2 and i.shape[0] == q.shape[0] for _, i in sources)
    out = torch.empty_like(q)
    for s in range(0, q.shape[0], QUERY_CHUNK):
        idx = [i[s:s + QUERY_CHUNK].long() for _, i in sources]
        valid = torch.cat([i >= 0 for i in idx], dim=1)
        rows = torch.cat([gather_rows(src, i).float() for (src, _), i in zip(sources, idx)], dim=1)  # [t, K, D]
        scores = torch.einsum("thd,tkd->thk", q[s:s + QUERY_CHUNK].float(), rows) * scale
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        sink_b = sink.float()[None, :, None].expand(scores.shape[0], -1, 1)
        m = torch.maximum(scores.amax(-1, keepdim=True), sink_b)
        p = torch.exp(scores - m)
        denom = p.sum(-1, keepdim=True) + torch.exp(sink_b - m)
        out[s:s + QUERY_CHUNK] = (torch.einsum("thk,tkd->thd", p, rows) / denom).to(q.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Triton

@triton.jit
def _row_starts(slots, row_stride, page_rows, page_bytes, IS_FP8: tl.constexpr, DATA_BYTES: tl.constexpr,
                SCALE_BYTES: tl.constexpr):
    """Where the rows at `slots` `[BK]` start (int64, once per tile for every load of it): plain rows, their
    first element (twice); fp8_ds_mla pages (`page_rows` rows in `page_bytes` bytes, per source: groups
    differ in rows per block), their data byte and their scale bytes."""
    if IS_FP8:
        page = (slots // page_rows).to(tl.int64)
        off = (slots % page_rows).to(tl.int64)
        data = tl.multiple_of(page * page_bytes + off * DATA_BYTES, 16)  # (asserted: 16 | data, page)
        return data, page * page_bytes + page_rows * DATA_BYTES + off * SCALE_BYTES
    else:
        start = slots.to(tl.int64) * row_stride
        return start, start


@triton.jit
def _load_rows(src_ptr, start, scales, valid, c0, D: tl.constexpr, W: tl.constexpr, IS_FP8: tl.constexpr,
               NOPE: tl.constexpr, TILE: tl.constexpr, DTYPE: tl.constexpr):
    """Channels [c0, c0 + W) of the rows starting at `start` `[BK]` -> `[BK, W]` in the dot's DTYPE (zeros
    where invalid or past D). For fp8_ds_mla pages only the NoPE channels, zeros from NOPE on
    (`_load_rope` reads the rest); c0 and W are multiples of the scale tile. They dequantize in bf16 for
    bf16 dots (a power-of-two scale is exact there), else in fp32."""
    if IS_FP8:  # [BK, tiles, TILE] so each tile's scale broadcasts
        deq = tl.bfloat16 if DTYPE == tl.bfloat16 else tl.float32
        tiles = c0 // TILE + tl.arange(0, W // TILE)
        ch = tiles[:, None] * TILE + tl.arange(0, TILE)[None, :]  # [tiles, TILE] latent channel
        ok = valid[:, None, None] & (ch < NOPE)[None, :, :]
        nope = tl.load(src_ptr + start[:, None, None] + ch[None, :, :], mask=ok, other=0)
        nope = nope.to(tl.float8e4nv, bitcast=True).to(deq)
        sbyte = tl.load(src_ptr + scales[:, None] + tiles[None, :],
                        mask=valid[:, None] & (tiles < NOPE // TILE)[None, :], other=127)
        nope = nope * tl.exp2(sbyte.to(tl.float32) - 127.0).to(deq)[:, :, None]
        return tl.reshape(nope, [start.shape[0], W]).to(DTYPE)
    else:
        offs = c0 + tl.arange(0, W)
        ptr = src_ptr + start[:, None] + offs[None, :]
        return tl.load(ptr, mask=valid[:, None] & (offs < D)[None, :], other=0.0).to(DTYPE)


@triton.jit
def _load_rope(rope_ptr, data, valid, NOPE: tl.constexpr, ROPE: tl.constexpr, ROPE_W: tl.constexpr,
               DTYPE: tl.constexpr):
    """The bf16 RoPE channels of fp8_ds_mla rows whose data starts at byte `data` `[BK]` -> `[BK, ROPE_W]`
    (zeros past ROPE or where invalid), through a bf16 view of the pages (element = byte / 2; 16-byte
    aligned: asserted by the launcher)."""
    start = tl.multiple_of((data + NOPE) // 2, 8)
    r = tl.arange(0, ROPE_W)
    return tl.load(rope_ptr + start[:, None] + r[None, :], mask=valid[:, None] & (r < ROPE)[None, :],
                   other=0.0).to(DTYPE)


@triton.jit
def _attend(q, q_rest, q_rope, c0, c_rest, m, l, acc, acc_rope, src_ptr, rope_ptr, idx_ptr, lo, hi, row_stride,
            page_rows, page_bytes, scale, D: tl.constexpr, BLOCK_K: tl.constexpr, W: tl.constexpr,
            PARTS: tl.constexpr, IS_FP8: tl.constexpr, NOPE: tl.constexpr, ROPE: tl.constexpr,
            ROPE_W: tl.constexpr, TILE: tl.constexpr, DATA_BYTES: tl.constexpr, SCALE_BYTES: tl.constexpr,
            PRECISION: tl.constexpr):
    """Online-softmax update of (m, l, acc, acc_rope) over indices [lo, hi) of one query's list at
    `idx_ptr`. This program's output channels are [c0, c0 + W) (q's there); with 2 parts the scores also
    take the other half (q_rest at c_rest), which this program reads but does not accumulate. fp8 rows
    score and accumulate their RoPE channels separately (q_rope, acc_rope): the bf16 tail is read as its
    own narrow tile instead of a masked full-width one."""
    for k0 in range(lo, hi, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        slots = tl.load(idx_ptr + kk, mask=kk < hi, other=-1)
        valid = slots >= 0
        start, scales = _row_starts(slots, row_stride, page_rows, page_bytes, IS_FP8, DATA_BYTES, SCALE_BYTES)
        kv = _load_rows(src_ptr, start, scales, valid, c0, D, W, IS_FP8, NOPE, TILE, q.dtype)  # [BK, W]
        s = tl.dot(q, tl.trans(kv), input_precision=PRECISION)  # [BH, BK] fp32
        if PARTS == 2:
            k_rest = _load_rows(src_ptr, start, scales, valid, c_rest, D, W, IS_FP8, NOPE, TILE, q.dtype)
            s = tl.dot(q_rest, tl.trans(k_rest), s, input_precision=PRECISION)
        if IS_FP8:
            k_rope = _load_rope(rope_ptr, start, valid, NOPE, ROPE, ROPE_W, q.dtype)  # [BK, ROPE_W]
            s = tl.dot(q_rope, tl.trans(k_rope), s, input_precision=PRECISION)
        s = tl.where(valid[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(kv.dtype), kv, input_precision=PRECISION)
        if IS_FP8:  # every part keeps it (one [BH, BK] x [BK, 64] dot), the last one stores it
            acc_rope = acc_rope * alpha[:, None] + tl.dot(p.to(kv.dtype), k_rope, input_precision=PRECISION)
        m = m_new
    return m, l, acc, acc_rope


@triton.jit
def _sparse_attn_kernel(q_ptr, out_ptr, sink_ptr, part_o_ptr, part_lse_ptr,
                        src0_ptr, rope0_ptr, idx0_ptr, k0_len, idx0_stride, row0_stride, page0_rows, page0_bytes,
                        src1_ptr, rope1_ptr, idx1_ptr, k1_len, idx1_stride, row1_stride, page1_rows, page1_bytes,
                        H, q_stride_t, q_stride_h, o_stride_t, o_stride_h, split_len, scale,
                        D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                        PARTS: tl.constexpr, NUM_SPLITS: tl.constexpr, HAS_SRC1: tl.constexpr,
                        IS_FP8: tl.constexpr, NOPE: tl.constexpr, ROPE: tl.constexpr, ROPE_W: tl.constexpr,
                        TILE: tl.constexpr, DATA_BYTES: tl.constexpr, SCALE_BYTES: tl.constexpr,
                        PRECISION: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1) // PARTS
    part = tl.program_id(1) % PARTS
    split = tl.program_id(2)
    W: tl.constexpr = BLOCK_D // PARTS
    c0 = part * W  # this program's output channels [c0, c0 + W)
    c_rest = (1 - part) * W if PARTS == 2 else c0
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs = c0 + tl.arange(0, W)
    offs_rest = c_rest + tl.arange(0, W)
    offs_rope = NOPE + tl.arange(0, ROPE_W)  # fp8 rows: the RoPE channels, scored and stored apart
    hmask = heads < H
    q_row = q_ptr + t * q_stride_t + heads[:, None] * q_stride_h
    q = tl.load(q_row + offs[None, :], mask=hmask[:, None] & (offs < D)[None, :], other=0.0)
    q_rest = q
    if PARTS == 2:
        q_rest = tl.load(q_row + offs_rest[None, :], mask=hmask[:, None] & (offs_rest < D)[None, :], other=0.0)
    rope_mask = hmask[:, None] & (offs_rope < NOPE + ROPE)[None, :]
    q_rope = tl.zeros([BLOCK_H, ROPE_W], q.dtype)
    if IS_FP8:
        q_rope = tl.load(q_row + offs_rope[None, :], mask=rope_mask, other=0.0)
    m = tl.full([BLOCK_H], -1e30, tl.float32)  # finite: exp(m - m_new) stays 0/1, never nan
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, W], tl.float32)
    acc_rope = tl.zeros([BLOCK_H, ROPE_W], tl.float32)
    # this split's part of the concatenated list [src0 indices | src1 indices]
    lo = split * split_len
    hi = lo + split_len
    m, l, acc, acc_rope = _attend(q, q_rest, q_rope, c0, c_rest, m, l, acc, acc_rope, src0_ptr, rope0_ptr,
                                  idx0_ptr + t * idx0_stride, tl.minimum(lo, k0_len), tl.minimum(hi, k0_len),
                                  row0_stride, page0_rows, page0_bytes, scale, D, BLOCK_K, W, PARTS, IS_FP8, NOPE,
                                  ROPE, ROPE_W, TILE, DATA_BYTES, SCALE_BYTES, PRECISION)
    if HAS_SRC1:
        lo1 = tl.minimum(tl.maximum(lo - k0_len, 0), k1_len)
        hi1 = tl.minimum(tl.maximum(hi - k0_len, 0), k1_len)
        m, l, acc, acc_rope = _attend(q, q_rest, q_rope, c0, c_rest, m, l, acc, acc_rope, src1_ptr, rope1_ptr,
                                      idx1_ptr + t * idx1_stride, lo1, hi1, row1_stride, page1_rows, page1_bytes,
                                      scale, D, BLOCK_K, W, PARTS, IS_FP8, NOPE, ROPE, ROPE_W, TILE, DATA_BYTES,
                                      SCALE_BYTES, PRECISION)
    # acc holds channels [c0, c0 + W) below NOPE (plain rows: NOPE = D); the last part also stores the RoPE ones
    main_mask = hmask[:, None] & (offs < NOPE)[None, :]
    rope_mask = rope_mask & (part == PARTS - 1)
    if NUM_SPLITS == 1:
        sink = tl.load(sink_ptr + heads, mask=hmask, other=0.0)
        mf = tl.maximum(m, sink)
        w = tl.exp(m - mf)
        norm = (w / (l * w + tl.exp(sink - mf)))[:, None]
        o_row = out_ptr + t * o_stride_t + heads[:, None] * o_stride_h
        tl.store(o_row + offs[None, :], (acc * norm).to(out_ptr.dtype.element_ty), mask=main_mask)
        if IS_FP8:
            tl.store(o_row + offs_rope[None, :], (acc_rope * norm).to(out_ptr.dtype.element_ty), mask=rope_mask)
    else:  # partial (normalized output, LSE) of this split; -inf LSE when it saw no valid index
        row = (t * NUM_SPLITS + split) * H + heads  # [BH] row of part_o [T*S*H, BLOCK_D]
        lse = tl.where(l > 0, m + tl.log(tl.maximum(l, 1e-30)), float("-inf"))
        den = tl.maximum(l, 1e-30)[:, None]
        tl.store(part_o_ptr + row[:, None] * BLOCK_D + offs[None, :], acc / den, mask=main_mask)
        if IS_FP8:
            tl.store(part_o_ptr + row[:, None] * BLOCK_D + offs_rope[None, :], acc_rope / den, mask=rope_mask)
        tl.store(part_lse_ptr + row, lse, mask=hmask & (part == 0))


class _Source(NamedTuple):
    """One source as the kernel takes it (field order = the kernel's per-source arguments)."""

    storage: torch.Tensor
    rope_view: torch.Tensor  # fp8_ds_mla: the pages as bf16 (the RoPE tails are read through it); else storage
    indices: torch.Tensor
    num_indices: int
    index_stride: int
    row_stride: int
    page_rows: int
    page_bytes: int
    layout: object  # Fp8DsMlaLayout or None (plain rows)

    @property
    def kernel_args(self) -> tuple:
        return tuple(self[:8])


def _source(src, idx: torch.Tensor) -> _Source:
    assert idx.dim() == 2 and (idx.stride(1) == 1 or idx.shape[1] <= 1), "index lists must be [T, K], unit stride"
    idx = idx if idx.dtype in (torch.int32, torch.int64) else idx.long()
    if isinstance(src, torch.Tensor):
        assert src.dim() == 2 and src.stride(1) == 1, "plain KV rows must be [N, D] with unit stride"
        return _Source(src, src, idx, idx.shape[1], idx.stride(0), src.stride(0), 1, 1, None)
    if src.layout is None:
        return _source(src.data, idx)
    lay = src.layout
    return _Source(src.data, src.data.view(torch.bfloat16), idx, idx.shape[1], idx.stride(0), 0, lay.block_size,
                   lay.page_bytes, lay)


# Launch defaults per row format: (fewest query tokens, config), the first row that t reaches wins. From
# H200 sweeps at V4-Flash shapes (64 heads, 512 latent, 640 rows per query; benchmarks/results/
# h200_sparse_attn_decode_parts.json, h200_sparse_attn_decode_rope_split.json): all heads in one program
# (each row read once) from 32 requests on; output channels in 2 parts at small batches (more programs in
# flight where SMs would idle); 64 rows at a time where a request's list is long against the batch.
_LAUNCH_CONFIGS = {
    "fp8_ds_mla": ((32, dict(block_h=64, block_k=64, num_warps=8, num_stages=2, parts=1)),
                   (8, dict(block_h=64, block_k=32, num_warps=8, num_stages=1, parts=2)),
                   (0, dict(block_h=32, block_k=16, num_warps=8, num_stages=1, parts=2))),
    "bf16": ((128, dict(block_h=64, block_k=64, num_warps=8, num_stages=2, parts=1)),
             (32, dict(block_h=64, block_k=32, num_warps=8, num_stages=2, parts=1)),
             (8, dict(block_h=16, block_k=32, num_warps=4, num_stages=2, parts=1)),
             (0, dict(block_h=16, block_k=32, num_warps=4, num_stages=2, parts=2))),
}


def launch_config(t: int, h: int, fp8: bool) -> dict:
    """Default (block_h, block_k, num_warps, num_stages, parts) for t query tokens of h heads."""
    cfg = dict(next(c for min_t, c in _LAUNCH_CONFIGS["fp8_ds_mla" if fp8 else "bf16"] if t >= min_t))
    cfg["block_h"] = min(cfg["block_h"], max(16, next_pow2(h)))
    return cfg


def sparse_attn(q: torch.Tensor, sources: Sequence[tuple[object, torch.Tensor]], sink: torch.Tensor,
                scale: float, *, block_h: int | None = None, block_k: int | None = None,
                num_warps: int | None = None, num_stages: int | None = None, parts: int | None = None,
                num_splits: int | None = None) -> torch.Tensor:
    """Triton launcher with sparse_attn_ref's contract, for at most two sources of one format.

    q `[T, H, D]` (bf16/fp16/fp32; D is the latent, 512 for V4) with unit stride on D; sources:
    plain rows `[N, D]` (tensor or PagedRows) or fp8_ds_mla PagedRows (`data` `[pages,
    page_bytes]` uint8), each with int indices `[T, K_i]`; sink `[H]` fp32. The dot runs in q's
    dtype (fp8 rows dequantize exactly into bf16; fp32 q uses full-precision fp32 dots, not tf32);
    accumulation and softmax in fp32. Launch arguments left None take launch_config's defaults; 2
    parts need half the padded latent to be a multiple of the scale tile (else 1 part runs). A GPU
    that cannot fit the configuration gets the next of `smaller_configs` that fits.
    """
    assert q.dim() == 3 and q.stride(2) == 1, "q must be [T, H, D] with unit stride on D"
    assert 1 <= len(sources) <= 2, "the Triton kernel takes one or two sources (window + compressed)"
    t, h, d = q.shape
    out = torch.empty_like(q)
    if t == 0:
        return out
    args = [_source(s, i) for s, i in sources]
    layouts = [a.layout for a in args]
    layout = layouts[0]
    if layout is not None:
        assert all(x is not None and (x.nope, x.rope, x.tile) == (layout.nope, layout.rope, layout.tile)
                   for x in layouts), "all sources must share one row format"
        assert layout.nope + layout.rope == d, f"fp8_ds_mla rows hold {layout.nope + layout.rope} channels, q has {d}"
        assert next_pow2(layout.num_tiles) * layout.tile == next_pow2(d), "scale tiles must tile the padded latent"
        assert layout.data_bytes % 16 == 0 and layout.nope % 16 == 0, "fp8_ds_mla rows must be 16-byte aligned"
        assert layout.rope > 0, "fp8_ds_mla latent rows carry bf16 RoPE channels after the NoPE bytes"
    else:
        assert all(x is None for x in layouts) and all(a.storage.shape[1] == d for a in args), \
            "all sources must be plain rows as wide as q"
    cfg = launch_config(t, h, layout is not None)
    given = dict(block_h=block_h, block_k=block_k, num_warps=num_warps, num_stages=num_stages, parts=parts)
    cfg.update({k: v for k, v in given.items() if v is not None})
    assert cfg["parts"] in (1, 2), f"parts must be 1 or 2, not {cfg['parts']}"
    launch = functools.partial(_launch, q, out, args, sink, scale, layout, num_splits)
    key = ("sparse_attn", q.device, q.dtype, h, d, layout, len(args), num_splits, tuple(cfg.values()))
    launch_first_fitting(launch, smaller_configs(cfg), key)
    return out


def smaller_configs(cfg: dict) -> Iterator[dict]:
    """cfg, then ever smaller shared-memory footprints for GPUs that do not fit it: half the rows per
    step (down to 16), then half the heads per program (down to 16); one pipeline stage only after
    all of those, because without cp.async pipelining the rows pass through registers and a layout
    conversion that needs more shared memory, not less (compile-only reports for SM120:
    tools/sparse_attn_resources.py)."""
    seen = []
    for stages in dict.fromkeys((cfg["num_stages"], 1)):
        c = dict(cfg, num_stages=stages)
        while True:
            if c not in seen:
                seen.append(c)
                yield c
            if c["block_k"] > 16:
                c = dict(c, block_k=c["block_k"] // 2)
            elif c["block_h"] > 16:
                c = dict(c, block_h=c["block_h"] // 2)
            else:
                break


def row_format(layout, d: int) -> dict:
    """The kernel's row-format constants: fp8_ds_mla pages (layout) or plain rows of width d (layout None)."""
    if layout is None:
        return dict(NOPE=d, ROPE=0, ROPE_W=16, TILE=1, DATA_BYTES=1, SCALE_BYTES=1)
    return dict(NOPE=layout.nope, ROPE=layout.rope, ROPE_W=max(16, next_pow2(layout.rope)), TILE=layout.tile,
                DATA_BYTES=layout.data_bytes, SCALE_BYTES=layout.scale_bytes)


def _launch(q, out, args, sink, scale, layout, num_splits, cfg) -> None:
    t, h, d = q.shape
    block_d = next_pow2(d)
    block_h, block_k, parts = cfg["block_h"], cfg["block_k"], cfg["parts"]
    if parts == 2 and (block_d // 2 < 16 or (layout is not None and (block_d // 2) % layout.tile)):
        parts = 1  # a half must hold whole scale tiles and be a dot operand (>= 16 wide)
    total = sum(a.num_indices for a in args)
    num_splits, split_len, part_o, part_lse = plan_splits(q, out, total, t * triton.cdiv(h, block_h) * parts,
                                                          block_k, block_d, num_splits)
    # a missing second source repeats the first with no indices (HAS_SRC1 skips it)
    a1 = args[1] if len(args) == 2 else args[0]._replace(num_indices=0)
    _sparse_attn_kernel[(t, triton.cdiv(h, block_h) * parts, num_splits)](
        q, out, sink, part_o, part_lse,
        *args[0].kernel_args, *a1.kernel_args,
        h, q.stride(0), q.stride(1), out.stride(0), out.stride(1), split_len, scale,
        D=d, BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_D=block_d, PARTS=parts, NUM_SPLITS=num_splits,
        HAS_SRC1=len(args) == 2, IS_FP8=layout is not None, PRECISION=dot_precision(q.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **row_format(layout, d))
    if num_splits > 1:
        merge_splits(part_o, part_lse, sink, out, num_splits)
