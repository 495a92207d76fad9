"""Manifold-constrained hyper-connections (mHC, spec §3.3): the residual path of DeepSeek V4.

The residual is `hc` parallel streams `X [T, hc, D]`. A sub-layer reads a token-dependent mix
of the streams (`pre`), and writes back `post_k * y + sum_j comb[j,k] * X[j]` where `comb` is
Sinkhorn-normalised to be (nearly) doubly stochastic.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm.model_executor.layers.layernorm import rms_normalize


def _fp32_param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=torch.float32), requires_grad=False)


class HyperConnection(nn.Module):
    """One sub-layer site: `fn [(2+hc)*hc, hc*D]`, `base [(2+hc)*hc]`, `scale [3]` (fp32)."""

    def __init__(self, hc: int, dim: int, sinkhorn_iters: int, hc_eps: float, norm_eps: float):
        super().__init__()
        self.hc, self.iters, self.hc_eps, self.norm_eps = hc, sinkhorn_iters, hc_eps, norm_eps
        self.fn = _fp32_param((2 + hc) * hc, hc * dim)
        self.base = _fp32_param((2 + hc) * hc)
        self.scale = _fp32_param(3)

    def pre(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """streams `[T, hc, D]` -> (sub-layer input `[T, D]`, post `[T, hc]`, comb `[T, hc, hc]` fp32)."""
        hc = self.hc
        mixes = rms_normalize(streams.flatten(1).float(), self.norm_eps) @ self.fn.t()  # [T, (2+hc)*hc]
        pre_m, post_m, comb_m = mixes.split([hc, hc, hc * hc], dim=-1)
        pre_b, post_b, comb_b = self.base.split([hc, hc, hc * hc])
        pre = torch.sigmoid(pre_m * self.scale[0] + pre_b) + self.hc_eps
        post = 2 * torch.sigmoid(post_m * self.scale[1] + post_b)
        comb = comb_m.unflatten(-1, (hc, hc)) * self.scale[2] + comb_b.view(hc, hc)
        comb = torch.softmax(comb, dim=-1) + self.hc_eps
        comb = comb / (comb.sum(-2, keepdim=True) + self.hc_eps)
        for _ in range(self.iters - 1):
            comb = comb / (comb.sum(-1, keepdim=True) + self.hc_eps)
            comb = comb / (comb.sum(-2, keepdim=True) + self.hc_eps)
        x = (pre.unsqueeze(-1) * streams.float()).sum(1).to(streams.dtype)
        return x, post, comb


def hc_post(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """X_new[k] = post_k * y + sum_j comb[j, k] * residual[j]; fp32 math, residual dtype out."""
    mixed = torch.einsum("tjk,tjd->tkd", comb, residual.float())
    return (post.unsqueeze(-1) * y.float().unsqueeze(1) + mixed).to(residual.dtype)


class HyperHead(nn.Module):
    """Final collapse of the streams: sigmoid-weighted sum, no Sinkhorn (`hc_head_{fn,base,scale}`)."""

    def __init__(self, hc: int, dim: int, hc_eps: float, norm_eps: float):
        super().__init__()
        self.hc_eps, self.norm_eps = hc_eps, norm_eps
        self.fn = _fp32_param(hc, hc * dim)
        self.base = _fp32_param(hc)
        self.scale = _fp32_param(1)

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        mixes = rms_normalize(streams.flatten(1).float(), self.norm_eps) @ self.fn.t()
        w = torch.sigmoid(mixes * self.scale + self.base) + self.hc_eps  # [T, hc]
        return (w.unsqueeze(-1) * streams.float()).sum(1).to(streams.dtype)
