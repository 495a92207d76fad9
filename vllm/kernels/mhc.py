"""Manifold-constrained hyper-connections (mHC, spec §3.3): pre-mix, post-mix and head collapse.

The residual is `hc` streams `X [T, hc, D]`. Per token, `xf = flatten(X)` (fp32, hc*D values),
`mixes = (xf @ fn^T) * rsqrt(mean(xf²) + norm_eps)`, then:

- pre  (`fn [(2+hc)*hc, hc*D]`, `base [(2+hc)*hc]`, `scale [3]`):
  `pre_j = sigmoid(m_j s0 + b_j) + hc_eps`, `post_j = 2 sigmoid(m_{hc+j} s1 + b_{hc+j})`,
  `comb[j, k]` = row softmax of `m_{2hc+j*hc+k} s2 + b_{..}` plus hc_eps, then `iters` Sinkhorn
  half-steps (columns first, then `iters-1` times rows and columns, each `/ (sum + hc_eps)`);
  returns `x = Σ_j pre_j X[j]` (fp32 accumulate, stream dtype), post `[T, hc]`, comb `[T, hc, hc]`.
- post: `new[k] = post_k y + Σ_j comb[j, k] residual[j]` in fp32, residual dtype out.
- head (`fn [hc, hc*D]`, `base [hc]`, `scale [1]`): `x = Σ_j (sigmoid(m_j s0 + b_j) + hc_eps) X[j]`.

`*_ref` are the torch references (the definition). The Triton pre/head run in two launches: a
split-K GEMM `[T, hc*D] x [M, hc*D]^T` giving partial mixes `[splits, T, M]` and partial sums of
squares `[splits, T]`, then one single-warp program per (token, D range) that sums the splits,
applies the sigmoids and the Sinkhorn on the hc×hc matrix in registers, and writes the weighted
stream sum (the streams are read twice: once per launch). post is one memory-bound launch over
(token, D block). GEMM precision: fp32 streams use true fp32 dots; bf16 streams use two bf16 dots
against fn split as hi + lo bf16 (fn kept to ~16 mantissa bits, more than DeepGEMM's TF32
`tf32_hc_prenorm_gemm`, and on an H100 2x faster than a tf32 dot on upcast streams); fp16 streams
use tf32. Accumulation is fp32 throughout.
"""

from __future__ import annotations

import functools

import torch

from vllm.kernels._triton import dot_precision, interpreting, next_pow2, tl, triton

MAX_SPLITS = 64  # split-K partials are summed in one vector load by the apply kernel


# ---------------------------------------------------------------------------------------------
# torch references

def _mixes_ref(streams: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    xf = streams.flatten(1).float()
    xn = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + norm_eps)  # rms_normalize in fp32
    return xn @ fn.t()


def mhc_pre_ref(streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, iters: int,
                hc_eps: float, norm_eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """streams `[T, hc, D]`; fn `[(2+hc)*hc, hc*D]`, base `[(2+hc)*hc]`, scale `[3]` fp32 ->
    (x `[T, D]` streams.dtype, post `[T, hc]` fp32, comb `[T, hc, hc]` fp32)."""
    hc = streams.shape[1]
    mixes = _mixes_ref(streams, fn, norm_eps)  # [T, (2+hc)*hc]
    pre_m, post_m, comb_m = mixes.split([hc, hc, hc * hc], dim=-1)
    pre_b, post_b, comb_b = base.split([hc, hc, hc * hc])
    pre = torch.sigmoid(pre_m * scale[0] + pre_b) + hc_eps
    post = 2 * torch.sigmoid(post_m * scale[1] + post_b)
    comb = comb_m.unflatten(-1, (hc, hc)) * scale[2] + comb_b.view(hc, hc)
    comb = torch.softmax(comb, dim=-1) + hc_eps
    comb = comb / (comb.sum(-2, keepdim=True) + hc_eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + hc_eps)
        comb = comb / (comb.sum(-2, keepdim=True) + hc_eps)
    x = (pre.unsqueeze(-1) * streams.float()).sum(1).to(streams.dtype)
    return x, post, comb


def mhc_post_ref(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """y `[T, D]`, residual `[T, hc, D]`, post `[T, hc]`, comb `[T, hc, hc]` fp32 -> new streams
    `[T, hc, D]` in residual.dtype: new[k] = post_k * y + Σ_j comb[j, k] * residual[j] (fp32 math)."""
    mixed = torch.einsum("tjk,tjd->tkd", comb, residual.float())
    return (post.unsqueeze(-1) * y.float().unsqueeze(1) + mixed).to(residual.dtype)


def mhc_head_ref(streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, hc_eps: float,
                 norm_eps: float) -> torch.Tensor:
    """streams `[T, hc, D]`; fn `[hc, hc*D]`, base `[hc]`, scale `[1]` fp32 -> `[T, D]` streams.dtype."""
    mixes = _mixes_ref(streams, fn, norm_eps)
    w = torch.sigmoid(mixes * scale + base) + hc_eps  # [T, hc]
    return (w.unsqueeze(-1) * streams.float()).sum(1).to(streams.dtype)


# ---------------------------------------------------------------------------------------------
# Triton

@triton.jit
def _to_out(x, dtype: tl.constexpr, RNE_BF16: tl.constexpr):
    """fp32 -> output dtype. RNE_BF16 (interpreter only, whose own bf16 cast truncates): round to
    nearest even by hand so CPU results match torch's cast."""
    if RNE_BF16:
        b = x.to(tl.uint32, bitcast=True)
        x = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _mix_partials_kernel(x_ptr, fn_ptr, part_ptr, sq_ptr, T, K, M, split_len, BLOCK_T: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                         SPLIT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """Program (token block, split): part[s, t, :M] = x[t, ks] @ fn[:, ks]^T, sq[s, t] = Σ x[t, ks]²."""
    s = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = rows < T
    ms = tl.arange(0, BLOCK_M)
    mmask = ms < M
    acc = tl.zeros((BLOCK_T, BLOCK_M), dtype=tl.float32)
    sq = tl.zeros((BLOCK_T,), dtype=tl.float32)
    k_lo = s * split_len
    k_hi = tl.minimum(k_lo + split_len, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < k_hi
        x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(fn_ptr + ms[:, None] * K + ks[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        xf = x.to(tl.float32)
        if SPLIT_BF16:  # bf16 x against fn = hi + lo (two bf16 dots, fn kept to ~16 bits)
            hi = w.to(tl.bfloat16)
            lo = (w - hi.to(tl.float32)).to(tl.bfloat16)
            if INTERPRET:  # the interpreter's bf16 dot is inexact: same products, in fp32
                acc = tl.dot(xf, tl.trans(hi.to(tl.float32)), acc, input_precision="ieee")
                acc = tl.dot(xf, tl.trans(lo.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, tl.trans(hi), acc)
                acc = tl.dot(x, tl.trans(lo), acc)
        else:
            acc = tl.dot(xf, tl.trans(w), acc, input_precision=PRECISION)
        sq += tl.sum(xf * xf, 1)
    out = s * T + rows
    tl.store(part_ptr + out[:, None] * M + ms[None, :], acc, mask=tmask[:, None] & mmask[None, :])
    tl.store(sq_ptr + out, sq, mask=tmask)


@triton.jit
def _mix_apply_kernel(x_ptr, part_ptr, sq_ptr, base_ptr, scale_ptr, out_ptr, post_ptr, comb_ptr, T, D, M, splits,
                      d_per_prog, iters, hc_eps, norm_eps, HC: tl.constexpr, HC_P: tl.constexpr,
                      BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, SINKHORN: tl.constexpr,
                      RNE_BF16: tl.constexpr):
    """Program (token, D range): mixes from the split partials, pre weights (and post, comb when
    SINKHORN; written by the first D range only), out[t, d] = Σ_j pre_j x[t, j, d]."""
    t = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1)
    ss = tl.arange(0, BLOCK_S)
    smask = ss < splits
    srow = (ss * T + t) * M  # start of each split's mixes for this token
    j = tl.arange(0, HC_P)
    jmask = j < HC
    rs = tl.rsqrt(tl.sum(tl.load(sq_ptr + ss * T + t, mask=smask, other=0.0), 0) / (HC * D) + norm_eps)
    pre_m = tl.sum(tl.load(part_ptr + srow[:, None] + j[None, :], mask=smask[:, None] & jmask[None, :],
                           other=0.0), 0) * rs
    pre = tl.sigmoid(pre_m * tl.load(scale_ptr) + tl.load(base_ptr + j, mask=jmask, other=0.0)) + hc_eps
    if SINKHORN:
        first = pd == 0
        post_m = tl.sum(tl.load(part_ptr + srow[:, None] + HC + j[None, :], mask=smask[:, None] & jmask[None, :],
                                other=0.0), 0) * rs
        post = 2 * tl.sigmoid(post_m * tl.load(scale_ptr + 1) + tl.load(base_ptr + HC + j, mask=jmask, other=0.0))
        tl.store(post_ptr + t * HC + j, post, mask=jmask & first)
        k = tl.arange(0, HC_P)
        kmask = k < HC
        cidx = j[:, None] * HC + k[None, :]  # comb[j, k]
        cmask = jmask[:, None] & kmask[None, :]
        c = tl.sum(tl.load(part_ptr + srow[:, None, None] + 2 * HC + cidx[None, :, :],
                           mask=smask[:, None, None] & cmask[None, :, :], other=0.0), 0) * rs
        c = c * tl.load(scale_ptr + 2) + tl.load(base_ptr + 2 * HC + cidx, mask=cmask, other=0.0)
        c = tl.where(kmask[None, :], c, float("-inf"))  # padded rows keep finite values on real columns
        e = tl.exp(c - tl.max(c, 1)[:, None])
        c = tl.where(cmask, e / tl.sum(e, 1)[:, None] + hc_eps, 0.0)
        c = c / (tl.sum(c, 0)[None, :] + hc_eps)
        for _it in range(iters - 1):
            c = c / (tl.sum(c, 1)[:, None] + hc_eps)
            c = c / (tl.sum(c, 0)[None, :] + hc_eps)
        tl.store(comb_ptr + t * HC * HC + cidx, c, mask=cmask & first)
    d_lo = pd * d_per_prog
    d_hi = tl.minimum(d_lo + d_per_prog, D)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < d_hi
        xs = tl.load(x_ptr + (t * HC + j[:, None]) * D + ds[None, :], mask=jmask[:, None] & dmask[None, :],
                     other=0.0)
        acc = tl.sum(pre[:, None] * xs.to(tl.float32), 0)
        tl.store(out_ptr + t * D + ds, _to_out(acc, out_ptr.dtype.element_ty, RNE_BF16), mask=dmask)


@triton.jit
def _post_kernel(y_ptr, r_ptr, post_ptr, comb_ptr, out_ptr, D, HC: tl.constexpr, HC_P: tl.constexpr,
                 BLOCK_D: tl.constexpr, RNE_BF16: tl.constexpr):
    """Program (token, D block): out[t, k, d] = post[t, k] y[t, d] + Σ_j comb[t, j, k] r[t, j, d]."""
    t = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    k = tl.arange(0, HC_P)
    kmask = k < HC
    mixed = tl.zeros((HC_P, BLOCK_D), dtype=tl.float32)
    for jj in tl.static_range(HC):
        cj = tl.load(comb_ptr + (t * HC + jj) * HC + k, mask=kmask, other=0.0)
        rj = tl.load(r_ptr + (t * HC + jj) * D + ds, mask=dmask, other=0.0).to(tl.float32)
        mixed += cj[:, None] * rj[None, :]
    p = tl.load(post_ptr + t * HC + k, mask=kmask, other=0.0)
    y = tl.load(y_ptr + t * D + ds, mask=dmask, other=0.0).to(tl.float32)
    out = p[:, None] * y[None, :] + mixed
    tl.store(out_ptr + (t * HC + k[:, None]) * D + ds[None, :], _to_out(out, out_ptr.dtype.element_ty, RNE_BF16),
             mask=kmask[:, None] & dmask[None, :])


# ---------------------------------------------------------------------------------------------
# launchers

@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: a few programs, so that CPU tests still cover split-K
    return torch.cuda.get_device_properties(device).multi_processor_count


def _rne_bf16(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and interpreting()


def _check_streams(streams: torch.Tensor, name: str = "streams") -> tuple[int, int, int]:
    assert streams.dim() == 3, f"{name} must be [T, hc, D], got shape {tuple(streams.shape)}"
    assert streams.dtype in (torch.bfloat16, torch.float16, torch.float32), f"{name}: unsupported {streams.dtype}"
    assert streams.is_contiguous(), f"{name} must be contiguous [T, hc, D]"
    return tuple(streams.shape)


def _check_params(streams, fn, base, scale, rows: int, n_scale: int):
    hc, d = streams.shape[1:]
    for name, p in (("fn", fn), ("base", base), ("scale", scale)):
        assert p.dtype == torch.float32 and p.is_contiguous(), f"{name} must be contiguous fp32"
        assert p.device == streams.device, f"{name} is on {p.device}, streams on {streams.device}"
    assert tuple(fn.shape) == (rows, hc * d), f"fn must be [{rows}, {hc * d}], got {tuple(fn.shape)}"
    assert tuple(base.shape) == (rows,), f"base must be [{rows}], got {tuple(base.shape)}"
    assert tuple(scale.shape) == (n_scale,), f"scale must be [{n_scale}], got {tuple(scale.shape)}"


def _launch_mix(streams, fn, base, scale, out, post, comb, iters: int, hc_eps: float, norm_eps: float,
                sinkhorn: bool, *, num_splits: int | None = None, block_t: int | None = None,
                block_k: int | None = None, num_warps: int = 4, num_stages: int = 3, apply_warps: int = 1,
                apply_block_d: int | None = None, split_bf16: bool | None = None):
    """Both launches of pre (sinkhorn) / head; the keywords override the heuristics, which come from
    H100 sweeps at V4-Flash shapes (benchmarks/kernels/bench_mhc.py)."""
    t, hc, d = streams.shape
    m, k = fn.shape
    sms = _num_sms(streams.device)
    block_t = block_t or (16 if t <= 16 else 32 if t <= 32 else 64)
    block_k = block_k or (64 if m > 16 and t > 16 else 128)  # pre's 24 fn rows: shorter K steps once T grows
    assert block_t >= 16 and block_k >= 16 and block_k == next_pow2(block_k), "dot tiles: powers of two >= 16"
    t_blocks, k_blocks = triton.cdiv(t, block_t), triton.cdiv(k, block_k)
    if num_splits is None:  # about two waves of programs: many splits at decode sizes, few for prefill
        num_splits = triton.cdiv(2 * sms, t_blocks)
    num_splits = max(1, min(num_splits, k_blocks, MAX_SPLITS))
    split_len = triton.cdiv(k_blocks, num_splits) * block_k
    num_splits = triton.cdiv(k, split_len)
    part = torch.empty(num_splits, t, m, dtype=torch.float32, device=streams.device)
    sq = torch.empty(num_splits, t, dtype=torch.float32, device=streams.device)
    _mix_partials_kernel[(t_blocks, num_splits)](
        streams, fn, part, sq, t, k, m, split_len, BLOCK_T=block_t, BLOCK_M=max(16, next_pow2(m)),
        BLOCK_K=block_k, PRECISION=dot_precision(streams.dtype),
        SPLIT_BF16=streams.dtype == torch.bfloat16 and split_bf16 is not False, INTERPRET=interpreting(),
        num_warps=num_warps, num_stages=num_stages)
    # one warp per program: the hc×hc reductions stay in-warp (4 warps ran the apply 3x slower)
    block_d = apply_block_d or min(next_pow2(d), 256 if t <= 16 else 1024)
    d_blocks = triton.cdiv(d, block_d)
    d_progs = max(1, min(d_blocks, triton.cdiv(4 * sms, t)))  # split D only while tokens are few
    d_per_prog = triton.cdiv(d_blocks, d_progs) * block_d
    _mix_apply_kernel[(t, triton.cdiv(d, d_per_prog))](
        streams, part, sq, base, scale, out, post, comb, t, d, m, num_splits, d_per_prog, iters, hc_eps, norm_eps,
        HC=hc, HC_P=next_pow2(hc), BLOCK_S=max(2, next_pow2(num_splits)), BLOCK_D=block_d, SINKHORN=sinkhorn,
        RNE_BF16=_rne_bf16(out.dtype), num_warps=apply_warps)


def mhc_pre(streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, iters: int,
            hc_eps: float, norm_eps: float, **launch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton mhc_pre_ref. streams `[T, hc, D]` contiguous bf16/fp16/fp32; fn `[(2+hc)*hc, hc*D]`,
    base `[(2+hc)*hc]`, scale `[3]`: contiguous fp32 on the same device. Returns x `[T, D]` in
    streams.dtype, post `[T, hc]` fp32, comb `[T, hc, hc]` fp32 (comb[t, j, k]). `launch`: keyword
    overrides of the launch heuristics for tests and sweeps (num_splits: split-K programs per token
    block; block_t, block_k, num_warps, num_stages: GEMM tiles; apply_warps, apply_block_d;
    split_bf16=False: tf32 dots for bf16 streams)."""
    t, hc, d = _check_streams(streams)
    _check_params(streams, fn, base, scale, (2 + hc) * hc, 3)
    assert iters >= 1, "at least one Sinkhorn iteration"
    x = torch.empty(t, d, dtype=streams.dtype, device=streams.device)
    post = torch.empty(t, hc, dtype=torch.float32, device=streams.device)
    comb = torch.empty(t, hc, hc, dtype=torch.float32, device=streams.device)
    if t:
        _launch_mix(streams, fn, base, scale, x, post, comb, iters, hc_eps, norm_eps, True, **launch)
    return x, post, comb


def mhc_head(streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, hc_eps: float,
             norm_eps: float, **launch) -> torch.Tensor:
    """Triton mhc_head_ref. streams `[T, hc, D]` contiguous bf16/fp16/fp32; fn `[hc, hc*D]`, base
    `[hc]`, scale `[1]`: contiguous fp32. Returns `[T, D]` in streams.dtype. `launch`: as mhc_pre's."""
    t, hc, d = _check_streams(streams)
    _check_params(streams, fn, base, scale, hc, 1)
    out = torch.empty(t, d, dtype=streams.dtype, device=streams.device)
    if t:
        _launch_mix(streams, fn, base, scale, out, out, out, 1, hc_eps, norm_eps, False, **launch)
    return out


def mhc_post(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor, *,
             block_d: int | None = None) -> torch.Tensor:
    """Triton mhc_post_ref. y `[T, D]` and residual `[T, hc, D]`: contiguous, one dtype (bf16/fp16/
    fp32); post `[T, hc]`, comb `[T, hc, hc]`: contiguous fp32. Returns `[T, hc, D]` in residual.dtype."""
    t, hc, d = _check_streams(residual, "residual")
    assert y.dtype == residual.dtype, f"y is {y.dtype}, residual {residual.dtype}"
    assert tuple(y.shape) == (t, d) and y.is_contiguous(), f"y must be contiguous [{t}, {d}], got {tuple(y.shape)}"
    for name, p, shape in (("post", post, (t, hc)), ("comb", comb, (t, hc, hc))):
        assert p.dtype == torch.float32 and p.is_contiguous(), f"{name} must be contiguous fp32"
        assert tuple(p.shape) == shape, f"{name} must be {list(shape)}, got {tuple(p.shape)}"
    out = torch.empty_like(residual)
    if t:
        block_d = block_d or min(next_pow2(d), 1024 if t >= 4 * _num_sms(y.device) else 256)
        _post_kernel[(t, triton.cdiv(d, block_d))](y, residual, post, comb, out, d, HC=hc, HC_P=next_pow2(hc),
                                                  BLOCK_D=block_d, RNE_BF16=_rne_bf16(out.dtype), num_warps=4)
    return out
