"""Incremental detokenization equals decoding the whole output, multi-byte characters included."""

from __future__ import annotations

import random

from vllm.engine.detokenizer import IncrementalDetokenizer
from vllm.model_executor.model_loader.tiny_checkpoint import TinyModelSpec
from vllm.tokenizers.hf_tokenizer import Tokenizer


def test_incremental_equals_full_decode(checkpoint_factory):
    tok = Tokenizer(checkpoint_factory(TinyModelSpec(naming="hub")))
    text = "Hello wörld — ünïcödé ✓ 深度求索 DeepSeek <think>x</think> 42!"
    rng = random.Random(0)
    for ids in [tok.encode(text, add_special_tokens=False),
                [rng.randrange(tok.vocab_size) for _ in range(200)]]:  # random ids split characters
        for skip in (True, False):
            d = IncrementalDetokenizer(tok, skip)
            for i, t in enumerate(ids):
                partial = d.add(t)
                assert tok.decode(ids[:i + 1], skip_special_tokens=skip).startswith(partial)
            assert d.flush() == tok.decode(ids, skip_special_tokens=skip)
