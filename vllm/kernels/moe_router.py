"""MoE router (spec §3.10, §8 item 9): gate logits, score function, expert choice, routing weights.

logits = x.float() @ weight.float().T (fp32); s = score_func(logits); the experts are
`tid2eid[input_ids]` (hash layers, in table order) or the top_k of the selection scores
`s + bias` (bias only selects; `s` without bias); w = s at the chosen experts, renormalised to
sum 1 if asked, times `scaling`. Grouped routing (DeepSeek V3, n_group > 1): the experts form
n_group contiguous groups, a group scores the sum of its two best selection scores, and only
experts of the topk_group best groups may be chosen.

Tie rule: among equal selection scores the LOWER expert index wins (groups likewise), and the
chosen ids come in descending selection-score order, ties by lower index.

`router_ref` is the torch reference (the `torch` backend); `router` does it all in ONE Triton
launch. Grid (token blocks, expert blocks, splits of D): each program multiplies a
[BLOCK_T, BLOCK_E] tile of logits over its share of D on the tensor cores (fp32 accumulation; one
token: on the CUDA cores, `launch_config`)
and stores it to an fp32 scratch `[splits, E, T]` (token-contiguous: see router_select.select), already
scored when there is one split and the score function is elementwise. It then bumps its token
block's int32 counter (acq_rel atomic, after a CTA barrier); the program that sees it was the
last for its token block resets the counter to 0 (so a CUDA graph replays the launch with no
re-zeroing) and does the selection for the whole token block: sum of the splits in a fixed
order (deterministic), score function, bias, group mask, top-k by int64 (score, index) keys,
weights gathered from the score tile, renormalise, scale. Splitting D puts ~one program on
every SM at decode sizes, where reading the 2 MB bf16 gate weight (V4-Flash) is the cost.

`norm_router` takes the ffn input before its RMSNorm: at one token the same launch normalizes it
(`norm_router_ref`: rms_norm_ref, then router_ref), so the norm costs no launch of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm.kernels._triton import dot_precision, interpreting, next_pow2, tl, triton
from vllm.kernels.router_select import score, select
from vllm.kernels.rms_norm import inv_rms, normalize, rms_norm as rms_norm_kernel, rms_norm_ref

SCORE_FUNCS = ("sqrtsoftplus", "sigmoid", "softmax")
_SCORE_FNS = {
    "sqrtsoftplus": lambda x: torch.sqrt(F.softplus(x)),
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
}


def _check_grouping(e: int, top_k: int, n_group: int, topk_group: int):
    assert 1 <= top_k <= e, f"top_k {top_k} must be in [1, {e}]"
    if n_group > 1:
        assert e % n_group == 0 and e // n_group >= 2, f"{e} experts do not split into {n_group} groups of >= 2"
        assert 1 <= topk_group <= n_group, f"topk_group {topk_group} must be in [1, {n_group}]"
        assert top_k <= topk_group * (e // n_group), "top_k exceeds the experts of the kept groups"


def router_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tid2eid: torch.Tensor | None,
               input_ids: torch.Tensor | None, *, top_k: int, score_func: str, renormalize: bool, scaling: float,
               n_group: int = 1, topk_group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x `[T, D]`, weight `[E, D]`, bias `[E]` fp32 or None, tid2eid `[V, top_k]` int or None (hash),
    input_ids `[T]` int (hash only) -> (weights `[T, top_k]` fp32, ids `[T, top_k]` int32)."""
    s = _SCORE_FNS[score_func](x.float() @ weight.float().T)  # [T, E] fp32
    if tid2eid is not None:
        ids = tid2eid[input_ids.long()].long()
    else:
        t, e = s.shape
        _check_grouping(e, top_k, n_group, topk_group)
        sel = s if bias is None else s + bias.float()
        if n_group > 1:
            grouped = sel.view(t, n_group, e // n_group)
            group_score = grouped.topk(2, dim=-1).values.sum(-1)  # [T, n_group]
            kept = group_score.sort(dim=-1, descending=True, stable=True).indices[:, :topk_group]
            keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)
            sel = sel.masked_fill(~keep.repeat_interleave(e // n_group, dim=1), float("-inf"))
        ids = sel.sort(dim=-1, descending=True, stable=True).indices[:, :top_k]  # stable: lower index first
    w = s.gather(1, ids)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w * scaling, ids.to(torch.int32)


@triton.jit
def _router_kernel(x_ptr, w_ptr, part_ptr, count_ptr, bias_ptr, tid_ptr, ids_in_ptr, out_w_ptr, out_id_ptr,
                   norm_w_ptr, normed_ptr, norm_eps,
                   T, E, D, d_per_split, x_stride, w_stride, tid_stride, scaling, top_k, topk_group, group_size,
                   SCORE: tl.constexpr, SCORED: tl.constexpr, HAS_BIAS: tl.constexpr, HASH: tl.constexpr,
                   RENORM: tl.constexpr, SPLITS: tl.constexpr, N_GROUP: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr, GEMV: tl.constexpr, NORM: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_ROW: tl.constexpr,
                   SEL_T: tl.constexpr, E_POW2: tl.constexpr, K_POW2: tl.constexpr, G_POW2: tl.constexpr):
    tb = tl.program_id(0)
    split = tl.program_id(2)
    rows = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    tmask = rows < T
    emask = cols < E
    d0 = split * d_per_split
    if GEMV:  # one token (BLOCK_T 1): products on the CUDA cores, fp32, summed over D once at the end
        w_rows = w_ptr + cols[:, None].to(tl.int64) * w_stride
        end = tl.minimum(d0 + d_per_split, D)
        k = d0 + tl.arange(0, BLOCK_D)
        wt = tl.load(w_rows + k[None, :], mask=emask[:, None] & (k < end)[None, :], other=0.0)  # [BLOCK_E, BLOCK_D]
        rstd = 0.0
        if NORM:  # x is the RMSNorm's input: every program takes the row's statistic (the same sum each),
            row = tl.arange(0, BLOCK_ROW)  # its first weight block already on the way
            xr = tl.load(x_ptr + row, mask=row < D, other=0.0).to(tl.float32)
            rstd = inv_rms(tl.sum(xr * xr, 0), D, norm_eps)
        prod = tl.zeros([BLOCK_E, BLOCK_D], dtype=tl.float32)
        for d in range(d0, end, BLOCK_D):
            k = d + tl.arange(0, BLOCK_D)
            kmask = k < end
            if d > d0:
                wt = tl.load(w_rows + k[None, :], mask=emask[:, None] & kmask[None, :], other=0.0)
            xv = tl.load(x_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            if NORM:  # rounded as the standalone norm rounds; the first expert block stores the normed row
                nw = tl.load(norm_w_ptr + k, mask=kmask, other=0.0).to(tl.float32)
                xv = normalize(xv, rstd, nw, x_ptr.dtype.element_ty, True).to(tl.float32)
                if tl.program_id(1) == 0:
                    tl.store(normed_ptr + k, xv.to(normed_ptr.dtype.element_ty), mask=kmask)
            prod += wt.to(tl.float32) * xv[None, :]
        acc = tl.sum(prod, 1)[None, :]
    else:
        x_rows = x_ptr + rows[:, None].to(tl.int64) * x_stride
        w_cols = w_ptr + cols[None, :].to(tl.int64) * w_stride
        acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)
        for d in range(d0, tl.minimum(d0 + d_per_split, D), BLOCK_D):
            k = d + tl.arange(0, BLOCK_D)
            kmask = k < D
            xt = tl.load(x_rows + k[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
            wt = tl.load(w_cols + k[:, None], mask=kmask[:, None] & emask[None, :], other=0.0)  # [BLOCK_D, BLOCK_E]
            if UPCAST:
                acc = tl.dot(xt.to(tl.float32), wt.to(tl.float32), acc, input_precision=PRECISION)
            else:
                acc = tl.dot(xt, wt, acc, input_precision=PRECISION)
    if SCORED:  # one split: these are final logits, score them here (elementwise score functions)
        acc = score(acc, acc, acc, SCORE)
    part = part_ptr + (split * E + cols)[None, :].to(tl.int64) * T + rows[:, None]  # [splits, E, T]
    tl.store(part, acc, mask=tmask[:, None] & emask[None, :])
    tl.debug_barrier()  # every warp's partial is issued before the release below
    arrived = tl.atomic_add(count_ptr + tb, 1, sem="acq_rel", scope="gpu")
    if arrived == tl.num_programs(1) * SPLITS - 1:  # last program of this token block
        tl.store(count_ptr + tb, 0)  # all others have arrived: ready for the next launch / graph replay
        for r in range(tb * BLOCK_T, tl.minimum(tb * BLOCK_T + BLOCK_T, T), SEL_T):
            select(part_ptr, bias_ptr, tid_ptr, ids_in_ptr, out_w_ptr, out_id_ptr, r, T, E,
                    tid_stride, scaling, top_k, topk_group, group_size, SPLITS, SCORE, SCORED, HAS_BIAS, HASH,
                    RENORM, N_GROUP, SEL_T, E_POW2, K_POW2, G_POW2)


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(n: int, device: torch.device) -> torch.Tensor:
    """Zeroed int32 arrival counters, one per token block, kept per device: every launch leaves them
    zero again. Launches that share a device must not run concurrently on different streams; the
    first launch on a device (or at a new high-water T) allocates, so warm up before graph capture."""
    c = _COUNTERS.get(device)
    if c is None or c.numel() < n:
        c = _COUNTERS[device] = torch.zeros(max(n, 4096, 2 * (0 if c is None else c.numel())), dtype=torch.int32,
                                            device=device)
    return c


def launch_config(t: int, e: int, d: int, sms: int) -> dict:
    """(block_t, block_e, block_d, splits, sel_t, num_warps, num_stages, gemv) by token count, for `sms`
    multiprocessors.

    One token (decode at batch 1, a latency chain: load, partial store, arrival atomic, reload,
    selection): `gemv` tiles multiply on the CUDA cores with each program's whole D share in one
    load (an H200 phase breakdown: the tile stage 1.9 -> 1.3 us over an empty launch against 16x16
    tensor-core tiles in four pipelined steps), 32 experts x 256 of D, about one program an SM
    (h200_router_t1_sweep.json: 4.9 us; 16 experts, two programs an SM, 5.1; 8 x 512 at 2 warps 5.3).
    From H100 sweeps at V4-Flash shapes (D 4096, E 256). Up to 16 tokens the 2 MB gate weight is the
    cost: 16x16 tiles and D split until ~one program per SM (8 splits); the last program then sums
    splits x t x E fp32 partials. Beyond, the last program's selection (serial over the rows of its
    token block) dominates, so token blocks stay small (16 rows: one selection pass each) with one
    split (the tile programs apply the score function) and wider expert tiles as t grows; from
    2048 tokens larger tiles, as the weight re-reads through L2 (t / block_t of them) start to count.
    sel_t is at most the tokens: rows past T still cost the selection their instructions (H200: 4
    masked rows made it 3x slower at T=1).
    """
    t = max(t, 1)  # no tokens: nothing launches, any configuration serves
    if t == 1:  # (block_e, block_d, splits, warps) from an H200 sweep of GEMV tiles and D splits
        grid = triton.cdiv(e, 32)
        splits = max(1, min(16, triton.cdiv(d, 256), sms // grid))
        return dict(block_t=1, block_e=32, block_d=256, splits=splits, sel_t=1, num_warps=4, num_stages=1, gemv=True)
    if t <= 16:
        bt, be, bd, splits, warps = 16, 16, 128, 8, 4 if t <= 4 else 8
    elif t <= 64:
        bt, be, bd, splits, warps = 16, 16, 128, 1, 4
    elif t <= 256:
        bt, be, bd, splits, warps = 16, 32, 64, 1, 4
    elif t <= 1024:
        bt, be, bd, splits, warps = 16, 64, 64, 1, 4
    elif t <= 2048:
        bt, be, bd, splits, warps = 32, 64, 64, 1, 4
    else:
        bt, be, bd, splits, warps = 64, 128, 64, 1, 8
    bt, be = min(bt, max(16, next_pow2(t))), min(be, max(16, next_pow2(e)))
    grid = triton.cdiv(t, bt) * triton.cdiv(e, be)
    splits = max(1, min(splits, triton.cdiv(d, bd), sms // grid, (1 << 15) // (min(t, bt) * e)))
    sel_t = min(bt, max(1, 4096 // next_pow2(e)))  # selection rows per pass: bounds its [rows, E] tiles
    return dict(block_t=bt, block_e=be, block_d=bd, splits=splits, sel_t=sel_t, num_warps=warps, num_stages=3,
                gemv=False)


def router(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tid2eid: torch.Tensor | None,
           input_ids: torch.Tensor | None, *, top_k: int, score_func: str, renormalize: bool, scaling: float,
           n_group: int = 1, topk_group: int = 1, **launch) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton router_ref, one launch. x `[T, D]` bf16/fp32 (unit stride on D); weight `[E, D]` x's dtype or
    bf16 (unit stride on D); bias `[E]` fp32 or None; tid2eid `[V, top_k]` int32/int64 or None (hash
    routing, then input_ids `[T]` int32/int64 is required). Returns (weights `[T, top_k]` fp32, ids
    `[T, top_k]` int32). bf16 x bf16 dots run on the tensor cores with fp32 accumulation; an fp32
    operand makes it a full-precision fp32 dot. Hash routing ignores bias; ids in tid2eid must lie in
    [0, E) and input_ids in [0, V) (not checked on the device). `launch` overrides launch_config's keys."""
    cfg = {**launch_config(x.shape[0], weight.shape[0], x.shape[1], _sms(x.device)), **launch}
    return _route(x, weight, bias, tid2eid, input_ids, None, cfg, top_k=top_k, score_func=score_func,
                  renormalize=renormalize, scaling=scaling, n_group=n_group, topk_group=topk_group)


def norm_router_ref(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor, *args,
                    **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ffn input's RMSNorm, then the router: -> (normed x, weights, ids) (rms_norm_ref, router_ref)."""
    normed = rms_norm_ref(x, norm_weight, eps)
    return (normed, *router_ref(normed, weight, *args, **kw))


def norm_router(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                bias: torch.Tensor | None, tid2eid: torch.Tensor | None, input_ids: torch.Tensor | None, *,
                top_k: int, score_func: str, renormalize: bool, scaling: float, n_group: int = 1,
                topk_group: int = 1, **launch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton norm_router_ref. One token (decode at batch 1, where launches are the cost) in ONE launch:
    every program normalizes the row itself (the statistic from the whole row, its D share rounded as the
    norm rounds), the first expert block stores the normed row for the experts. More tokens: the norm
    kernel, then the router (each program would re-read all of its rows for the statistic)."""
    cfg = {**launch_config(x.shape[0], weight.shape[0], x.shape[1], _sms(x.device)), **launch}
    kw = dict(top_k=top_k, score_func=score_func, renormalize=renormalize, scaling=scaling, n_group=n_group,
              topk_group=topk_group)
    if not cfg["gemv"]:
        normed = rms_norm_kernel(x, norm_weight, eps)
        return (normed, *_route(normed, weight, bias, tid2eid, input_ids, None, cfg, **kw))
    assert norm_weight.shape == (x.shape[1],), f"norm weight must be [{x.shape[1]}]"
    assert x.dim() == 2 and x.stride(1) == 1, "x must be [T, D] with unit stride on D"
    normed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return (normed, *_route(x, weight, bias, tid2eid, input_ids, (norm_weight.contiguous(), normed, eps), cfg,
                            **kw))


def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _route(x, weight, bias, tid2eid, input_ids, norm, cfg: dict, *, top_k: int, score_func: str,
           renormalize: bool, scaling: float, n_group: int, topk_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """router's launch with the launch configuration `cfg`; norm: (norm weight, normed output, eps) when x
    is the RMSNorm's input (gemv form)."""
    assert score_func in SCORE_FUNCS, f"score_func {score_func!r} not in {SCORE_FUNCS}"
    assert x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1], "x [T, D] and weight [E, D]"
    assert x.stride(1) == 1 and weight.stride(1) == 1, "x and weight need unit stride on D"
    assert x.dtype in (torch.bfloat16, torch.float32), f"x must be bf16 or fp32, not {x.dtype}"
    assert weight.dtype in (x.dtype, torch.bfloat16), f"weight must be bf16 or x's dtype, not {weight.dtype}"
    t, d = x.shape
    e = weight.shape[0]
    dev = x.device
    if tid2eid is not None:
        assert tid2eid.dim() == 2 and tid2eid.shape[1] == top_k, f"tid2eid must be [V, {top_k}]"
        assert tid2eid.dtype in (torch.int32, torch.int64) and tid2eid.stride(1) == 1, "tid2eid: int, unit stride"
        assert input_ids is not None and input_ids.shape == (t,), "hash routing needs input_ids [T]"
        assert input_ids.dtype in (torch.int32, torch.int64), "input_ids must be int32 or int64"
        assert 1 <= top_k <= e, f"top_k {top_k} must be in [1, {e}]"
        input_ids = input_ids.contiguous()
    else:
        _check_grouping(e, top_k, n_group, topk_group)
    if bias is not None:
        assert bias.shape == (e,) and bias.dtype == torch.float32, f"bias must be fp32 [{e}]"
        bias = bias.contiguous()
    out_w = torch.empty(t, top_k, dtype=torch.float32, device=dev)
    out_id = torch.empty(t, top_k, dtype=torch.int32, device=dev)
    if t == 0:
        return out_w, out_id
    bt, be, bd = cfg["block_t"], cfg["block_e"], cfg["block_d"]
    if cfg["gemv"]:
        assert bt == 1, "the CUDA-core (gemv) tiles take one token a program: block_t 1"
    else:
        assert norm is None, "the norm fuses into the one-token (gemv) form only"
        assert bt >= 16 and be >= 16 and bd >= 16, "tl.dot needs tile dims >= 16"
    chunks = triton.cdiv(d, bd)
    per = triton.cdiv(chunks, min(cfg["splits"], chunks))  # D chunks per split; no split left empty
    splits = triton.cdiv(chunks, per)
    part = torch.empty(splits, e, t, dtype=torch.float32, device=dev)
    e_pow2 = next_pow2(e)
    fp32 = torch.float32 in (x.dtype, weight.dtype)
    norm_w, normed, eps = norm if norm is not None else (x, x, 0.0)
    _router_kernel[(triton.cdiv(t, bt), triton.cdiv(e, be), splits)](
        x, weight, part, _counters(triton.cdiv(t, bt), dev), bias if bias is not None else part,
        tid2eid if tid2eid is not None else out_id, input_ids if tid2eid is not None else out_id, out_w, out_id,
        norm_w, normed, float(eps),
        t, e, d, per * bd, x.stride(0), weight.stride(0), tid2eid.stride(0) if tid2eid is not None else 0,
        float(scaling), top_k, topk_group, e // max(n_group, 1),
        SCORE=SCORE_FUNCS.index(score_func), SCORED=splits == 1 and score_func != "softmax",
        HAS_BIAS=bias is not None, HASH=tid2eid is not None,
        RENORM=renormalize, SPLITS=splits, N_GROUP=n_group if tid2eid is None else 1, UPCAST=fp32 or interpreting(),
        PRECISION=dot_precision(torch.float32 if fp32 or interpreting() else torch.bfloat16), GEMV=cfg["gemv"],
        NORM=norm is not None, BLOCK_T=bt, BLOCK_E=be, BLOCK_D=bd, BLOCK_ROW=next_pow2(d) if norm is not None else 16,
        SEL_T=min(bt, cfg["sel_t"], next_pow2(t)), E_POW2=e_pow2,
        K_POW2=next_pow2(top_k), G_POW2=next_pow2(max(n_group, 1)),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out_w, out_id
