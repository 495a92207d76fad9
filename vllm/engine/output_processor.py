"""Output processing: append sampled tokens, detokenize, apply stop rules, build RequestOutputs."""

from __future__ import annotations

from vllm.engine.detokenizer import IncrementalDetokenizer
from vllm.engine.request import Request
from vllm.outputs import CompletionOutput, Logprob, RequestOutput
from vllm.tokenizers.hf_tokenizer import Tokenizer
from vllm.worker.sampler import SampledToken


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None):
        self.tokenizer = tokenizer

    def _decode_one(self, token_id: int) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _logprob_dict(self, token_id: int, lp: float, rank: int, top: list[tuple[int, float]]) -> dict[int, Logprob]:
        d = {token_id: Logprob(lp, rank, self._decode_one(token_id))}
        for r, (tid, tlp) in enumerate(top, start=1):
            d.setdefault(tid, Logprob(tlp, r, self._decode_one(tid)))
        return d

    def add_prompt_logprobs(self, req: Request, first_position: int, rows) -> None:
        """Rows for prompt positions first_position.. (chunks arrive in order; a recomputation after
        preemption repeats positions already recorded, which are skipped)."""
        if req.prompt_logprobs is None:
            req.prompt_logprobs = [None]  # the first prompt token has no logprob
        for pos, row in enumerate(rows, start=first_position):
            if pos == len(req.prompt_logprobs):
                req.prompt_logprobs.append(self._logprob_dict(*row))

    def append_token(self, req: Request, tok: SampledToken) -> tuple[str, int | str | None] | None:
        """Record a sampled token; -> (finish_reason, stop_reason) if the request is now done.

        A stop token (EOS or a stop_token_id) ends the output without adding its text, as in vLLM."""
        p = req.sampling_params
        req.output_token_ids.append(tok.token_id)
        req.cumulative_logprob += tok.logprob
        if p.logprobs is not None:
            req.logprobs = req.logprobs or []
            req.logprobs.append(self._logprob_dict(tok.token_id, tok.logprob, tok.rank, tok.top))
        n_out = len(req.output_token_ids)
        may_stop = n_out >= p.min_tokens
        if may_stop and not p.ignore_eos and tok.token_id in req.eos_token_ids:
            return self._finish_text(req, "stop", None)
        if may_stop and tok.token_id in p.stop_token_ids:
            return self._finish_text(req, "stop", tok.token_id)
        if self.tokenizer is not None:
            if req.detokenizer is None:
                req.detokenizer = IncrementalDetokenizer(self.tokenizer, p.skip_special_tokens)
            req.text = req.detokenizer.add(tok.token_id)
        if may_stop:
            hit = self._stop_string(req)
            if hit is not None:
                return "stop", hit
        if n_out >= req.max_tokens:
            return self._finish_text(req, "length", None)
        return None

    @staticmethod
    def _finish_text(req: Request, reason: str, stop_reason: int | None) -> tuple[str, int | None]:
        if req.detokenizer is not None:
            req.text = req.detokenizer.flush()
        return reason, stop_reason

    def _stop_string(self, req: Request) -> str | None:
        p = req.sampling_params
        if not p.stop_strings or self.tokenizer is None:
            return None
        found = [(req.text.find(s), s) for s in p.stop_strings if s in req.text]
        if not found:
            return None
        at, s = min(found)
        req.text = req.text[: at + len(s)] if p.include_stop_str_in_output else req.text[:at]
        return s

    @staticmethod
    def make_output(parent_id: str, children: list[Request]) -> RequestOutput:
        first = children[0]
        outs = [CompletionOutput(
            index=r.index, text=r.text, token_ids=list(r.output_token_ids),
            cumulative_logprob=r.cumulative_logprob if r.sampling_params.logprobs is not None else None,
            logprobs=r.logprobs, finish_reason=r.finish_reason, stop_reason=r.stop_reason) for r in children]
        errors = [r.error for r in children if r.error]
        return RequestOutput(parent_id, first.prompt, first.prompt_token_ids, first.prompt_logprobs, outs,
                             finished=all(r.is_finished for r in children), error=errors[0] if errors else None)
