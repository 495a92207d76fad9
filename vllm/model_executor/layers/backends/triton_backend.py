"""The `triton` MoE/GEMM backend: the portable Triton kernels (any CUDA GPU from SM 8.0, SM12x
included; FP8 weights need SM 8.9 for the e4m3 convert). On CPU only in Triton's interpreter."""

from __future__ import annotations

from vllm.kernels import fused_moe, mhc, moe_router, quant_gemm, rms_norm
from vllm.kernels._triton import triton_unsupported_reason
from vllm.model_executor.layers.backends.base import MoEGemmBackend


class TritonMoEGemmBackend(MoEGemmBackend):
    name = "triton"

    @classmethod
    def unsupported_reason(cls, device, weight_formats=frozenset()):
        return triton_unsupported_reason(device, "FP8 weights" if quant_gemm.FP8_BLOCK in weight_formats else None)

    def linear(self, x, w, groups=1):
        return quant_gemm.linear(x, w, groups)

    def moe(self, x, topk_weights, topk_ids, routed, shared, limit):
        return fused_moe.fused_moe(x, topk_weights, topk_ids, routed, limit, shared,
                                   fuse_shared=None if self.fuse_shared_experts else False)

    def norm_router(self, x, norm_weight, eps, weight, bias, tid2eid, input_ids, *, top_k, score_func,
                    renormalize, scaling):
        return moe_router.norm_router(x, norm_weight, eps, weight, bias, tid2eid, input_ids,
                                      top_k=top_k, score_func=score_func, renormalize=renormalize, scaling=scaling)

    def rms_norm(self, x, weight, eps):
        return rms_norm.rms_norm(x, weight, eps)

    def mhc_pre(self, streams, fn, base, scale, iters, hc_eps, norm_eps):
        return mhc.mhc_pre(streams, fn, base, scale, iters, hc_eps, norm_eps)

    def mhc_post(self, y, residual, post, comb):
        return mhc.mhc_post(y, residual, post, comb)

    def mhc_head(self, streams, fn, base, scale, hc_eps, norm_eps):
        return mhc.mhc_head(streams, fn, base, scale, hc_eps, norm_eps)
