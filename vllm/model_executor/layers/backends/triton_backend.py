"""The `triton` MoE/GEMM backend: the portable Triton kernels (any CUDA GPU from SM 8.0, SM12x
included; FP8 weights need SM 8.9 for the e4m3 convert). On CPU only in Triton's interpreter."""

from __future__ import annotations

import torch

from vllm.kernels import fused_moe, mhc, moe_router, quant_gemm
from vllm.kernels._triton import HAS_TRITON, interpreting
from vllm.model_executor.layers.backends.base import MoEGemmBackend


class TritonMoEGemmBackend(MoEGemmBackend):
    name = "triton"

    @classmethod
    def unsupported_reason(cls, device, weight_formats=frozenset()):
        if not HAS_TRITON:
            return "triton is not installed"
        if device.type == "cpu":
            return None if interpreting() else "CPU runs Triton only in its interpreter (TRITON_INTERPRET=1)"
        if device.type != "cuda":
            return f"no Triton kernels for {device.type}"
        sm = torch.cuda.get_device_capability(device)
        if sm < (8, 0):
            return f"needs SM >= 8.0 (bf16 tensor cores), this GPU is SM {sm[0]}.{sm[1]}"
        if quant_gemm.FP8_BLOCK in weight_formats and sm < (8, 9):
            return f"FP8 weights need SM >= 8.9 (e4m3 conversion), this GPU is SM {sm[0]}.{sm[1]}"
        return None

    def linear(self, x, w, groups=1):
        return quant_gemm.linear(x, w, groups)

    def moe(self, x, topk_weights, topk_ids, routed, shared, limit):
        if shared is None or self.fuse_shared_experts:
            return fused_moe.fused_moe(x, topk_weights, topk_ids, routed, limit, shared)
        out = fused_moe.fused_moe(x, topk_weights, topk_ids, routed, limit)
        gate, up = quant_gemm.linear(x, shared.w1), quant_gemm.linear(x, shared.w3)
        h = fused_moe.clamped_swiglu(gate.float(), up.float(), limit).to(x.dtype)
        return out + quant_gemm.linear(h, shared.w2)

    def router(self, x, weight, bias, tid2eid, input_ids, *, top_k, score_func, renormalize, scaling):
        return moe_router.router(x, weight, bias, tid2eid, input_ids, top_k=top_k, score_func=score_func,
                                 renormalize=renormalize, scaling=scaling)

    def mhc_pre(self, streams, fn, base, scale, iters, hc_eps, norm_eps):
        return mhc.mhc_pre(streams, fn, base, scale, iters, hc_eps, norm_eps)

    def mhc_post(self, y, residual, post, comb):
        return mhc.mhc_post(y, residual, post, comb)

    def mhc_head(self, streams, fn, base, scale, hc_eps, norm_eps):
        return mhc.mhc_head(streams, fn, base, scale, hc_eps, norm_eps)
