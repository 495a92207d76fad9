"""Sampler: logits -> next token (greedy or temperature/top-k/top-p/min-p) and logprobs.

Logprobs are those of the model's own distribution (log_softmax of the raw logits), as vLLM
reports by default; sampling transforms only affect which token is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm.sampling_params import SamplingParams


@dataclass
class SampledToken:
    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]]
    """The `logprobs` most likely tokens with their logprobs (empty when not requested)."""


def token_logprobs(logprobs: torch.Tensor, token_id: int, k: int) -> tuple[float, int, list[tuple[int, float]]]:
    """(logprob of token, its 1-based rank, top-k (id, logprob)) from a `[V]` logprob vector."""
    lp = logprobs[token_id]
    rank = int((logprobs > lp).sum().item()) + 1
    top = []
    if k:
        vals, ids = logprobs.topk(min(k, logprobs.shape[-1]))
        top = list(zip(ids.tolist(), vals.tolist()))
    return float(lp.item()), rank, top


def _filter(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Apply top-k, top-p and min-p to temperature-scaled logits `[V]` (masked -> -inf)."""
    if p.top_k > 0 and p.top_k < logits.shape[-1]:
        kth = logits.topk(p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if p.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= p.top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
        probs = torch.softmax(logits, -1)
    if p.min_p > 0.0:
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


class Sampler:
    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
               banned: list[int] | None = None) -> SampledToken:
        """logits `[V]` fp32 (any device). `banned` ids cannot be drawn (EOS/stop ids before min_tokens)."""
        logits = logits.float().cpu()
        logprobs = torch.log_softmax(logits, -1)
        work = logits if not banned else logits.index_fill(0, torch.tensor(banned), float("-inf"))
        if params.greedy:
            token = int(work.argmax().item())
        else:
            probs = torch.softmax(_filter(work / params.temperature, params), -1)
            token = int(torch.multinomial(probs, 1, generator=generator or self.generator).item())
        lp, rank, top = token_logprobs(logprobs, token, params.logprobs or 0)
        return SampledToken(token, lp, rank, top)
