"""ForcedContinuation: forces its tokens right after the trigger, bans EOS until they are out."""

import pytest
import torch

from vllm.logits_processors import ForcedContinuation
from vllm.sampling_params import SamplingParams

V, EOS, END = 10, 0, 9


def _argmax_run(proc, outputs, steps):
    """Greedy decode where the model always prefers EOS, then token 5."""
    out = list(outputs)
    for _ in range(steps):
        logits = torch.zeros(V)
        logits[EOS], logits[5] = 3.0, 2.0
        out.append(int(proc(out, logits).argmax()))
    return out


def test_forced_at_start_then_free():
    proc = ForcedContinuation((7, 8, 7), None, (EOS,))
    assert _argmax_run(proc, [], 5) == [7, 8, 7, EOS, EOS]


def test_waits_for_trigger_with_eos_banned_then_forces():
    proc = ForcedContinuation((7, 8), END, (EOS,))
    assert _argmax_run(proc, [], 2) == [5, 5]  # EOS banned before the trigger
    assert _argmax_run(proc, [5, END], 3) == [5, END, 7, 8, EOS]
    # a pure function of the output: a recomputation from any prefix continues the same way
    assert _argmax_run(proc, [5, END, 7], 2) == [5, END, 7, 8, EOS]


def test_forced_token_with_minus_inf_logit_is_still_drawn():
    proc = ForcedContinuation((3,))
    logits = torch.full((V,), float("-inf"))
    assert int(proc([], logits).argmax()) == 3 and torch.isfinite(proc([], logits)).sum() == 1


def test_sampling_params_rejects_non_callables():
    with pytest.raises(ValueError, match="logits_processors"):
        SamplingParams(logits_processors=[3])
