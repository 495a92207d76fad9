"""The `torch` MoE/GEMM backend: the references in `vllm/kernels/`, on any device."""

from __future__ import annotations

from vllm.kernels import fused_moe, mhc, moe_router, quant_gemm, rms_norm
from vllm.model_executor.layers.backends.base import MoEGemmBackend


class TorchMoEGemmBackend(MoEGemmBackend):
    """Always the unfused shared expert: the reference is the definition the kernels are held to."""

    name = "torch"

    @classmethod
    def unsupported_reason(cls, device, weight_formats=frozenset()):
        return None

    def linear(self, x, w, groups=1):
        return quant_gemm.linear_ref(x, w, groups)

    def moe(self, x, topk_weights, topk_ids, routed, shared, limit):
        return fused_moe.fused_moe_ref(x, topk_weights, topk_ids, routed, limit, shared)

    def norm_router(self, x, norm_weight, eps, weight, bias, tid2eid, input_ids, *, top_k, score_func,
                    renormalize, scaling):
        return moe_router.norm_router_ref(x, norm_weight, eps, weight, bias, tid2eid, input_ids,
                                          top_k=top_k, score_func=score_func, renormalize=renormalize, scaling=scaling)

    def rms_norm(self, x, weight, eps):
        return rms_norm.rms_norm_ref(x, weight, eps)

    def mhc_pre(self, streams, fn, base, scale, iters, hc_eps, norm_eps):
        return mhc.mhc_pre_ref(streams, fn, base, scale, iters, hc_eps, norm_eps)

    def mhc_post(self, y, residual, post, comb):
        return mhc.mhc_post_ref(y, residual, post, comb)

    def mhc_head(self, streams, fn, base, scale, hc_eps, norm_eps):
        return mhc.mhc_head_ref(streams, fn, base, scale, hc_eps, norm_eps)
