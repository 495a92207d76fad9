"""The router's scoring and expert choice, run by the last program of each token block (`moe_router`).

Scores from summed partial logits (sqrt-softplus, sigmoid, softmax); top-k by int64 keys whose one max
is an argmax with ties to the lower expert index; DeepSeek V3's group-limited selection; the hash
table's experts; weights gathered, renormalised and scaled.
"""

from __future__ import annotations

from vllm.kernels._triton import HAS_TRITON, tl, triton


@triton.jit
def _softplus_sqrt(x):
    """sqrt(softplus(x)) = sqrt(max(x, 0) + log1p(exp(-|x|))); log1p(z) = log(u) * z / (u - 1), u = 1 + z
    (exact to rounding where u == 1 too, where it is z)."""
    z = tl.exp(-tl.abs(x))
    u = 1.0 + z
    log1p = tl.where(u == 1.0, z, tl.log(u) * (z / (u - 1.0)))
    return tl.sqrt(tl.maximum(x, 0.0) + log1p)


KEY_MIN = tl.constexpr(-(2**63 - 1)) if HAS_TRITON else None  # below every key: excluded or already taken


@triton.jit
def _sort_key(v, col, PAD: tl.constexpr):
    """int64 keys whose order is (v descending, then col ascending): the order-preserving int32 image of
    fp32 v (-0.0 taken as +0.0) in the high half, PAD - 1 - col in the low half. One max = argmax with ties
    to the lower index."""
    bits = tl.where(v == 0.0, 0.0, v).to(tl.int32, bitcast=True)
    mono = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (mono.to(tl.int64) << 32) | (PAD - 1 - col).to(tl.int64)


@triton.jit
def _key_value(key):
    mono = (key >> 32).to(tl.int32)
    return tl.where(mono >= 0, mono, mono ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def _key_col(key, PAD: tl.constexpr):
    return PAD - 1 - (key & 0xFFFFFFFF).to(tl.int32)


@triton.jit
def _logits(part_ptr, offs, mask, E, T, SPLITS: tl.constexpr):
    """Sum over splits (fixed order) of the partial logits at offsets `offs` into one split `[E, T]`."""
    acc = tl.zeros(offs.shape, dtype=tl.float32)
    for sp in tl.static_range(SPLITS):  # unrolled: all loads in flight at once; .cg: from L2, no stale L1 line
        acc += tl.load(part_ptr + sp * E.to(tl.int64) * T + offs, mask=mask, other=0.0, cache_modifier=".cg")
    return acc


@triton.jit
def score(logits, row_max, row_den, SCORE: tl.constexpr):
    if SCORE == 0:
        return _softplus_sqrt(logits)
    elif SCORE == 1:
        return tl.sigmoid(logits)
    else:
        return tl.exp(logits - row_max[:, None]) / row_den[:, None]


@triton.jit
def select(part_ptr, bias_ptr, tid_ptr, ids_in_ptr, out_w_ptr, out_id_ptr, row0, T, E, tid_stride, scaling,
            top_k, topk_group, group_size, SPLITS: tl.constexpr, SCORE: tl.constexpr, SCORED: tl.constexpr,
            HAS_BIAS: tl.constexpr, HASH: tl.constexpr, RENORM: tl.constexpr, N_GROUP: tl.constexpr,
            SEL_T: tl.constexpr, E_POW2: tl.constexpr, K_POW2: tl.constexpr, G_POW2: tl.constexpr):
    """Routing of tokens [row0, row0 + SEL_T) from the partial logits `part_ptr` `[SPLITS, E, T]` (the
    scores themselves when SCORED). Token-contiguous partials give tiles whose threads each hold one
    token's experts, so reductions over E stay mostly inside a thread (expert-contiguous ones made
    every thread hold every row and reduce each across warps). Top-k: k rounds of one int64 max over
    (score, index) keys."""
    rows = row0 + tl.arange(0, SEL_T)
    ecol = tl.arange(0, E_POW2)
    kcol = tl.arange(0, K_POW2)
    tmask = rows < T
    emask = ecol < E
    kmask = tmask[:, None] & (kcol < top_k)[None, :]
    row_max = tl.zeros([SEL_T], dtype=tl.float32)
    row_den = tl.zeros([SEL_T], dtype=tl.float32)
    if (not HASH) or SCORE == 2:
        logits = _logits(part_ptr, ecol[None, :].to(tl.int64) * T + rows[:, None], tmask[:, None] & emask[None, :],
                         E, T, SPLITS)
        if SCORE == 2:
            z = tl.where(emask[None, :], logits, float("-inf"))
            row_max = tl.max(z, 1)
            row_den = tl.sum(tl.exp(z - row_max[:, None]), 1)
        if SCORED:
            s = logits
        else:
            s = score(logits, row_max, row_den, SCORE)
    if HASH:
        tok = tl.load(ids_in_ptr + rows, mask=tmask, other=0).to(tl.int64)
        ids = tl.load(tid_ptr + tok[:, None] * tid_stride + kcol[None, :], mask=kmask, other=0).to(tl.int32)
    else:
        sel = s
        if HAS_BIAS:
            sel = s + tl.load(bias_ptr + ecol, mask=emask, other=0.0)[None, :]
        key = tl.where(emask[None, :], _sort_key(sel, ecol[None, :], E_POW2), KEY_MIN)
        if N_GROUP > 1:
            gcol = tl.arange(0, G_POW2)
            egroup = ecol // group_size
            gkey = tl.full([SEL_T, G_POW2], KEY_MIN, dtype=tl.int64)
            for g in range(N_GROUP):  # group score: the sum of its two best selection scores
                kg = tl.where((egroup == g)[None, :], key, KEY_MIN)
                k1 = tl.max(kg, 1)
                k2 = tl.max(tl.where(kg == k1[:, None], KEY_MIN, kg), 1)
                gs = _sort_key(_key_value(k1) + _key_value(k2), tl.zeros([SEL_T], dtype=tl.int32) + g, G_POW2)
                gkey = tl.where(gcol[None, :] == g, gs[:, None], gkey)
            keep = tl.zeros([SEL_T, E_POW2], dtype=tl.int1)
            for gk in range(topk_group):
                gmax = tl.max(gkey, 1)
                keep = keep | (egroup[None, :] == _key_col(gmax, G_POW2)[:, None])
                gkey = tl.where(gkey == gmax[:, None], KEY_MIN, gkey)
            key = tl.where(keep, key, KEY_MIN)
        ids = tl.zeros([SEL_T, K_POW2], dtype=tl.int32)
        for j in range(top_k):  # (tl.topk's bitonic network measured ~1.7x slower on an H100)
            kmax = tl.max(key, 1)
            ids = tl.where(kcol[None, :] == j, _key_col(kmax, E_POW2)[:, None], ids)
            key = tl.where(key == kmax[:, None], KEY_MIN, key)
    if HASH and SCORE != 2:  # no score tile: the scores at ids from the partials, as the tile would have them
        w = _logits(part_ptr, ids.to(tl.int64) * T + rows[:, None], kmask, E, T, SPLITS)
        if not SCORED:
            w = score(w, row_max, row_den, SCORE)
    else:
        w = tl.gather(s, ids, 1)
    w = tl.where(kmask, w, 0.0)
    if RENORM:
        w = w / tl.sum(w, 1)[:, None]
    out = rows[:, None].to(tl.int64) * top_k + kcol[None, :]
    tl.store(out_w_ptr + out, w * scaling, mask=kmask)
    tl.store(out_id_ptr + out, ids, mask=kmask)
