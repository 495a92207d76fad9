"""Per-request logits processors: `(output_token_ids, logits [V]) -> logits`, vLLM's per-request form.

They run on the row of the next token before sampling (logprobs then describe the processed
distribution, as in vLLM). Each is a pure function of the output so far, so a request recomputed
after preemption is constrained exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


def _only(logits: torch.Tensor, token_id: int) -> torch.Tensor:
    out = torch.full_like(logits, float("-inf"))
    out[token_id] = logits[token_id] if torch.isfinite(logits[token_id]) else 0.0
    return out


@dataclass(frozen=True)
class ForcedContinuation:
    """Force `forced` token ids right after `after` (a token id; None = at the start of the output).

    Until the forced tokens are all out, `banned` ids (EOS) cannot be drawn, so the output cannot
    end before the continuation. Used for `tool_choice: "required"` / a named function: the output
    must open a tool-call block (and the named function) once reasoning is over.
    """

    forced: tuple[int, ...]
    after: int | None = None
    banned: tuple[int, ...] = ()

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if self.after is None:
            start = 0
        elif self.after in output_ids:
            start = output_ids.index(self.after) + 1
        else:
            return logits.index_fill(0, torch.tensor(self.banned, dtype=torch.long), float("-inf")) \
                if self.banned else logits
        done = len(output_ids) - start
        if done < len(self.forced):
            return _only(logits, self.forced[done])
        return logits
