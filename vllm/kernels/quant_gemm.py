"""Quantized GEMMs `y = x @ W^T` (spec §4.2): DeepSeek's block-FP8 linears (W8A8, 128x128 weight
blocks, per-token 128-block activations, UE8M0 scales), MXFP4 weights (packed e2m1, UE8M0 per 32
inputs) and plain weights, with optional block-diagonal groups (`wo_a`).

Weights are dequantized in-kernel to exact bf16 values (e4m3, e2m1 x 2^s and FP8 activations are
all exact in bf16), multiplied on bf16 tensor cores with fp32 accumulation: the products are the
reference's, only the summation order differs. FP8 block scales are applied per K tile after the
dot (the tile never straddles a 128 block); MXFP4 scales are folded into the decoded values.
`linear_ref` (torch) is the definition; `_accumulate` is shared with the fused MoE.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from vllm.kernels._triton import dot_precision, interpreting, launch_first_fitting, tl, triton
from vllm.kernels.act_quant import act_quant_fp8
from vllm.kernels.quant_codec import e2m1_scaled
from vllm.model_executor.layers.quantization.formats import dequant_fp8_block, dequant_mxfp4, quant_dequant_fp8_act

PLAIN, FP8_BLOCK, MXFP4 = "plain", "fp8_block", "mxfp4"
_FMT_CODE = {PLAIN: 0, FP8_BLOCK: 1, MXFP4: 2}
ACT_BLOCK = 128  # FP8 activation scales: one per token per 128 channels
MXFP4_GROUP = 32


class QuantWeight(NamedTuple):
    """A stored weight `[(E,) N, K]` in one format. fp8_block: e4m3 `[.., N, K]` + uint8 UE8M0
    `[.., ceil(N/bn), ceil(K/bk)]`; mxfp4: int8 packed `[.., N, K/2]` (low nibble = even k) + uint8
    `[.., N, K/32]`; plain: `[.., N, K]` any float dtype, scale None. `act_fp8`: the format quantizes
    its input activations to FP8 (per token, 128-channel blocks) as DeepSeek's reference does."""

    weight: torch.Tensor
    scale: torch.Tensor | None
    fmt: str
    block: tuple[int, int] = (128, 128)
    act_fp8: bool = False

    @property
    def out_features(self) -> int:
        return self.weight.shape[-2]

    @property
    def in_features(self) -> int:
        return self.weight.shape[-1] * (2 if self.fmt == MXFP4 else 1)

    def dense(self, expert: int | None = None) -> torch.Tensor:
        """fp32 (or plain dtype) `[N, K]` of the whole weight or one expert's."""
        w, s = self.weight, self.scale
        if expert is not None:
            w, s = w[expert], (None if s is None else s[expert])
        if self.fmt == FP8_BLOCK:
            return dequant_fp8_block(w, s, self.block)
        if self.fmt == MXFP4:
            return dequant_mxfp4(w, s, MXFP4_GROUP)
        return w


def linear_ref(x: torch.Tensor, w: QuantWeight, groups: int = 1) -> torch.Tensor:
    """x `[M, K]` (or `[M, G, K/G... ]` as `[M, G, K_g]` when groups > 1) -> `[M, N]` (`[M, G, N/G]`), x.dtype.
    Quantized formats compute in fp32; plain weights in x.dtype."""
    xin = quant_dequant_fp8_act(x, ACT_BLOCK) if w.act_fp8 else x  # the reference's QAT point
    if groups == 1:
        if w.fmt == PLAIN:
            return torch.nn.functional.linear(x, w.weight.to(x.dtype))
        return torch.nn.functional.linear(xin.float(), w.dense()).to(x.dtype)
    wd = w.dense().view(groups, -1, w.in_features)  # [G, R, K_g]
    compute = x.dtype if w.fmt == PLAIN else torch.float32
    return torch.einsum("tgi,gri->tgr", xin.to(compute), wd.to(compute)).to(x.dtype)


@triton.jit
def _mxfp4_scaled_part(acc, a, a_e, w_ptr, ws_ptr, n, ns, n_ok, k0, K, stride_wn, stride_wsn, A_FP8: tl.constexpr,
                       BK: tl.constexpr, EVEN_K: tl.constexpr):
    """acc += one K tile of MXFP4 weight rows `n` through the compiler's microscaled dot (its fast
    e2m1 upcast); `a` already loaded (with its e8m0 scale bytes when FP8)."""
    kc = k0 // 2 + tl.arange(0, BK // 2)
    g = k0 // 32 + tl.arange(0, BK // 32)
    if EVEN_K:  # no K mask: the weight loads vectorize to 16 bytes
        wm = n_ok[None, :]
        sm = n_ok[:, None]
    else:
        wm = (kc < K // 2)[:, None] & n_ok[None, :]
        sm = n_ok[:, None] & (g < K // 32)[None, :]
    wb = tl.load(w_ptr + n[None, :] * stride_wn + kc[:, None], mask=wm, other=0).to(tl.uint8, bitcast=True)
    sb = tl.load(ws_ptr + ns[:, None] * stride_wsn + g[None, :], mask=sm, other=127).to(tl.uint8, bitcast=True)
    if A_FP8:
        acc = tl.dot_scaled(a, a_e, "e4m3", wb, sb, "e2m1", acc)
    else:
        acc = tl.dot_scaled(a, None, "bf16", wb, sb, "e2m1", acc)
    return acc


@triton.jit
def _mxfp4_decoded_part(acc, a_even, a_odd, a_scale, w_ptr, ws_ptr, n, ns, n_ok, k0, K, stride_wn, stride_wsn,
                        A_FP8: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr, COMPUTE: tl.constexpr,
                        PRECISION: tl.constexpr):
    """acc += one K tile of MXFP4 weight rows `n` decoded here: even and odd k against the low and
    high nibbles."""
    HALF: tl.constexpr = BK // 2
    kc = k0 // 2 + tl.arange(0, HALF)
    g = k0 // 32 + tl.arange(0, BK // 32)
    if EVEN_K:
        wm = n_ok[None, :]
    else:
        wm = (kc < K // 2)[:, None] & n_ok[None, :]
    wb = tl.load(w_ptr + n[None, :] * stride_wn + kc[:, None], mask=wm, other=0).to(tl.int32) & 0xFF
    # one scale byte per 32 k = 16 packed columns: load [BK/32, BN], broadcast over the 16
    sb = tl.load(ws_ptr + ns[None, :] * stride_wsn + g[:, None], mask=(g < K // 32)[:, None] & n_ok[None, :],
                 other=127).to(tl.int32) & 0xFF
    sb = tl.reshape(tl.broadcast_to(sb[:, None, :], (BK // 32, 16, n.shape[0])), (HALF, n.shape[0]))
    part = tl.dot(a_even, e2m1_scaled(wb & 0xF, sb).to(COMPUTE), input_precision=PRECISION)
    part += tl.dot(a_odd, e2m1_scaled(wb >> 4, sb).to(COMPUTE), input_precision=PRECISION)
    if A_FP8:
        part *= a_scale[:, None]
    return acc + part


@triton.jit
def _block_part(acc, a, a_scale, w_ptr, ws_ptr, n, ns, n_ok, k0, K, stride_wn, stride_wsn, stride_wsk,
                W_FMT: tl.constexpr, A_FP8: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr,
                WBLOCK_N: tl.constexpr, WBLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
                FP8_DOT: tl.constexpr):
    """acc += one K tile of plain or FP8-block weight rows `n`."""
    k = k0 + tl.arange(0, BK)
    if EVEN_K:
        wm = n_ok[None, :]
    else:
        wm = (k < K)[:, None] & n_ok[None, :]
    w = tl.load(w_ptr + n[None, :] * stride_wn + k[:, None], mask=wm, other=0.0)
    if FP8_DOT:  # e4m3 x e4m3 on the tensor cores, promoted to fp32 per K tile (DeepGEMM's recipe)
        part = tl.dot(a, w)
    else:
        part = tl.dot(a.to(COMPUTE), w.to(COMPUTE), input_precision=PRECISION)
    if W_FMT == 1:  # FP8 blocks: one scale per (n block, k block); the K tile sits in one block
        sw = tl.load(ws_ptr + (ns // WBLOCK_N) * stride_wsn + (k0 // WBLOCK_K) * stride_wsk, mask=n_ok,
                     other=0).to(tl.int32) & 0xFF
        part *= ((sw << 23).to(tl.float32, bitcast=True))[None, :]
    if A_FP8:
        part *= a_scale[:, None]
    return acc + part


@triton.jit
def _accumulate(acc, acc3, a_ptr, a_rows, row_ok, as_ptr, as_rows, w_ptr, ws_ptr, w3_ptr, ws3_ptr, n, ns, n_ok,
                k_lo, k_hi, K, stride_wn, stride_wsn, stride_wsk, W_FMT: tl.constexpr, A_FP8: tl.constexpr,
                BK: tl.constexpr, WBLOCK_N: tl.constexpr, WBLOCK_K: tl.constexpr, COMPUTE: tl.constexpr,
                PRECISION: tl.constexpr, FP8_DOT: tl.constexpr = False, SCALED_DOT: tl.constexpr = False,
                DUAL: tl.constexpr = False, EVEN_K: tl.constexpr = False):
    """(acc, acc3) `[BM, BN]` += A[rows, k_lo:k_hi] @ (W, W3)[n, k_lo:k_hi]^T in ONE K loop: each A tile
    is loaded once and, with DUAL (gate and up), both weights' tiles are in flight together. W3
    shares W's strides and is ignored without DUAL. `a_rows` / `as_rows`: element offsets of each row
    of A and of its FP8 scales; W (and its scales) already offset to the expert; `n` the tile's weight
    rows, `ns` the same rows as the scales count them (groups share straddling blocks). EVEN_K: K is a
    multiple of BK, so no load needs a K mask."""
    for k0 in range(k_lo, k_hi, BK):
        if W_FMT == 2 and SCALED_DOT:
            k = k0 + tl.arange(0, BK)
            am = row_ok[:, None] if EVEN_K else row_ok[:, None] & (k < K)[None, :]
            a = tl.load(a_ptr + a_rows[:, None] + k[None, :], mask=am, other=0.0)
            a_e = a  # placeholder: bf16 activations carry no scale
            if A_FP8:  # the activation's power-of-two scale per 128 channels is an e8m0 byte per 32
                g = k0 // 32 + tl.arange(0, BK // 32)
                a_s = tl.load(as_ptr + as_rows[:, None] + (g // 4)[None, :],
                              mask=row_ok[:, None] & (g < K // 32)[None, :], other=1.0)
                a_e = ((a_s.to(tl.int32, bitcast=True) >> 23) & 0xFF).to(tl.uint8)
            else:
                a = a.to(tl.bfloat16)
            acc = _mxfp4_scaled_part(acc, a, a_e, w_ptr, ws_ptr, n, ns, n_ok, k0, K, stride_wn, stride_wsn, A_FP8,
                                     BK, EVEN_K)
            if DUAL:
                acc3 = _mxfp4_scaled_part(acc3, a, a_e, w3_ptr, ws3_ptr, n, ns, n_ok, k0, K, stride_wn, stride_wsn,
                                          A_FP8, BK, EVEN_K)
        elif W_FMT == 2:
            kc = k0 // 2 + tl.arange(0, BK // 2)  # packed column
            am = row_ok[:, None] if EVEN_K else row_ok[:, None] & (kc < K // 2)[None, :]
            a_even = tl.load(a_ptr + a_rows[:, None] + 2 * kc[None, :], mask=am, other=0.0).to(COMPUTE)
            a_odd = tl.load(a_ptr + a_rows[:, None] + 2 * kc[None, :] + 1, mask=am, other=0.0).to(COMPUTE)
            a_scale = row_ok  # (unused without FP8 activations)
            if A_FP8:
                a_scale = tl.load(as_ptr + as_rows + k0 // 128, mask=row_ok, other=0.0)
            acc = _mxfp4_decoded_part(acc, a_even, a_odd, a_scale, w_ptr, ws_ptr, n, ns, n_ok, k0, K, stride_wn,
                                      stride_wsn, A_FP8, BK, EVEN_K, COMPUTE, PRECISION)
            if DUAL:
                acc3 = _mxfp4_decoded_part(acc3, a_even, a_odd, a_scale, w3_ptr, ws3_ptr, n, ns, n_ok, k0, K,
                                           stride_wn, stride_wsn, A_FP8, BK, EVEN_K, COMPUTE, PRECISION)
        else:
            k = k0 + tl.arange(0, BK)
            am = row_ok[:, None] if EVEN_K else row_ok[:, None] & (k < K)[None, :]
            a = tl.load(a_ptr + a_rows[:, None] + k[None, :], mask=am, other=0.0)
            a_scale = row_ok  # (unused without FP8 activations)
            if A_FP8:
                a_scale = tl.load(as_ptr + as_rows + k0 // 128, mask=row_ok, other=0.0)
            acc = _block_part(acc, a, a_scale, w_ptr, ws_ptr, n, ns, n_ok, k0, K, stride_wn, stride_wsn, stride_wsk,
                              W_FMT, A_FP8, BK, EVEN_K, WBLOCK_N, WBLOCK_K, COMPUTE, PRECISION, FP8_DOT)
            if DUAL:
                acc3 = _block_part(acc3, a, a_scale, w3_ptr, ws3_ptr, n, ns, n_ok, k0, K, stride_wn, stride_wsn,
                                   stride_wsk, W_FMT, A_FP8, BK, EVEN_K, WBLOCK_N, WBLOCK_K, COMPUTE, PRECISION,
                                   FP8_DOT)
    return acc, acc3


@triton.jit
def _linear_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, out_ptr, M, N, K, k_split, stride_am, stride_ag, stride_asm,
                   stride_asg, stride_wn, stride_wg, stride_wsn, stride_wsk, stride_os, stride_om,
                   stride_og, SPLITS: tl.constexpr, W_FMT: tl.constexpr, A_FP8: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, WBLOCK_N: tl.constexpr, WBLOCK_K: tl.constexpr,
                   COMPUTE: tl.constexpr, PRECISION: tl.constexpr, FP8_DOT: tl.constexpr,
                   SCALED_DOT: tl.constexpr, EVEN_K: tl.constexpr):
    pid_m, pid_n, pid_gs = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = pid_gs // SPLITS
    split = pid_gs % SPLITS
    rows = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    row_ok = rows < M
    n = pid_n * BN + tl.arange(0, BN)
    n_ok = n < N
    k_lo = split * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    w = w_ptr + g * stride_wg
    acc, _ = _accumulate(acc, acc, a_ptr + g * stride_ag, rows * stride_am, row_ok, as_ptr + g * stride_asg,
                         rows * stride_asm, w, ws_ptr, w, ws_ptr, n, n + g * N, n_ok, k_lo, k_hi, K, stride_wn,
                         stride_wsn, stride_wsk, W_FMT, A_FP8, BK, WBLOCK_N, WBLOCK_K, COMPUTE, PRECISION, FP8_DOT,
                         SCALED_DOT, EVEN_K=EVEN_K)
    out = out_ptr + split * stride_os + g * stride_og + rows[:, None] * stride_om + n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def compute_dtype(x: torch.Tensor, w: QuantWeight):
    """bf16 tensor cores when every operand value is exact in bf16, else fp32 (fp32 models,
    and the interpreter, whose bf16 dot is inexact)."""
    exact_bf16 = (w.fmt != PLAIN or w.weight.dtype == torch.bfloat16) and (w.act_fp8 or x.dtype == torch.bfloat16)
    return tl.bfloat16 if exact_bf16 and not interpreting() else tl.float32


def fp8_tensor_cores(x: torch.Tensor, w: QuantWeight) -> bool:
    """FP8 x FP8 dots for block-FP8 weights in bf16 models on SM >= 8.9: products stay exact, the
    MMA's own accumulation is promoted to fp32 every K tile. fp32 models keep the exact bf16 path."""
    return (w.fmt == FP8_BLOCK and w.act_fp8 and x.dtype == torch.bfloat16 and x.is_cuda and not interpreting()
            and torch.cuda.get_device_capability(x.device) >= (8, 9))


def mxfp4_scaled_dot(x: torch.Tensor, w: QuantWeight) -> bool:
    """MXFP4 weights through `tl.dot_scaled` (2.6x the in-kernel bit decode at decode shapes on an
    H200) where it is verified: compiled bf16 models on Hopper and datacenter Blackwell. Elsewhere
    (SM8x, SM12x, the interpreter, fp32 models) the weights are decoded in the kernel."""
    return (w.fmt == MXFP4 and compute_dtype(x, w) == tl.bfloat16 and x.is_cuda
            and (9, 0) <= torch.cuda.get_device_capability(x.device) < (12, 0))


def gemm_config(m: int, fp32: bool) -> tuple[int, int, int, int, int]:
    """(BM, BN, BK, num_warps, num_stages) by token count: decode shapes stream the weight with
    narrow tiles; prefill uses 128x128 tiles (K tile 64 keeps FP8 block scales per tile). fp32
    operands take half the K tile to stay within shared memory."""
    if m <= 16:
        cfg = 16, 64, 128, 4, 4
    elif m <= 64:
        cfg = 64, 64, 128, 4, 3
    else:
        cfg = 128, 128, 64, 8, 3
    return (cfg[0], cfg[1], cfg[2] // 2, cfg[3], min(cfg[4], 2)) if fp32 else cfg


def linear(x: torch.Tensor, w: QuantWeight, groups: int = 1) -> torch.Tensor:
    """Triton `linear_ref`. x `[M, K]` or `[M, G, K_g]` (unit stride on K), w `[N, K]` (`[G*R, K_g]`:
    group g owns rows g*R..) in any QuantWeight format -> `[M, N]` / `[M, G, R]` in x.dtype.
    Small M splits K across programs (fp32 partials summed after) so the weight streams from many SMs."""
    assert x.stride(-1) == 1, "x needs unit stride on its last dim"
    assert w.scale is not None or w.fmt == PLAIN, f"{w.fmt} weight without its scale"
    n_total, k = w.out_features, w.in_features
    assert n_total % groups == 0, f"{n_total} output features do not split into {groups} groups"
    x3 = x.reshape(x.shape[0], groups, -1)
    assert x3.shape[-1] == k, f"x has {x3.shape[-1]} features per group, weight expects {k}"
    m, n = x3.shape[0], n_total // groups
    if w.fmt == MXFP4:
        assert k % MXFP4_GROUP == 0, f"MXFP4 needs K % {MXFP4_GROUP} == 0, got {k}"
    out = torch.empty(m, groups, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out.view(m, n_total) if groups == 1 else out
    if w.act_fp8:
        a, a_s = act_quant_fp8(x3.reshape(m * groups, k), ACT_BLOCK)
        a, a_s = a.view(m, groups, k), a_s.view(m, groups, -1)
    else:
        a, a_s = x3, x3.new_empty(1, 1, 1, dtype=torch.float32)
    cdt = compute_dtype(x, w)
    bm, bn, bk, warps, stages = gemm_config(m, cdt == tl.float32)
    if w.fmt == FP8_BLOCK:
        bk = min(bk, w.block[1])
        assert w.block[1] % bk == 0
    grid_mn = triton.cdiv(m, bm) * triton.cdiv(n, bn) * groups
    k_tiles = triton.cdiv(k, bk)
    splits = max(1, min(k_tiles // 2, 264 // grid_mn))  # fill the GPU when the M x N tiles do not
    k_split = triton.cdiv(k_tiles, splits) * bk
    splits = triton.cdiv(k, k_split)
    target = out if splits == 1 else torch.empty(splits, m, groups, n, dtype=torch.float32, device=x.device)
    ws = w.scale if w.scale is not None else w.weight
    wsn, wsk = (ws.stride(-2), ws.stride(-1)) if w.scale is not None else (0, 0)
    launch = functools.partial(_linear_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn), groups * splits)],
        a, a_s, w.weight, ws, target, m, n, k, k_split, a.stride(0), a.stride(1), a_s.stride(0), a_s.stride(1),
        w.weight.stride(0), n * w.weight.stride(0), wsn, wsk, target.stride(0) if splits > 1 else 0,
        target.stride(-3), target.stride(-2), SPLITS=splits, W_FMT=_FMT_CODE[w.fmt], A_FP8=w.act_fp8, BM=bm,
        BN=bn, BK=bk, WBLOCK_N=w.block[0], WBLOCK_K=w.block[1], COMPUTE=cdt,
        PRECISION=dot_precision(torch.float32 if cdt == tl.float32 else torch.bfloat16),
        FP8_DOT=fp8_tensor_cores(x, w), SCALED_DOT=mxfp4_scaled_dot(x, w), EVEN_K=k % bk == 0,
        num_warps=warps)
    # fewer pipeline stages where the GPU's shared memory (SM12x: ~100 KB a program) does not fit them
    launch_first_fitting(lambda cfg: launch(**cfg), (dict(num_stages=st) for st in range(stages, 0, -1)),
                         ("linear", x.device, cdt, w.fmt, w.act_fp8, bm, bn, bk, warps, stages))
    if splits > 1:
        out = target.sum(0).to(x.dtype)
    return out.view(m, n_total) if groups == 1 else out
