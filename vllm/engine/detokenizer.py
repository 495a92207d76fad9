"""Incremental detokenization: text grows by decoding only a short window of recent tokens.

Decoding the whole output every step costs O(n) per token. Instead keep two offsets (as vLLM
does): `prefix` starts a window of already-emitted tokens that gives the decoder context, `read`
marks the first token whose text is not emitted yet. Text that ends in an incomplete UTF-8
sequence (U+FFFD) is held back until the next token completes it.
"""

from __future__ import annotations

from vllm.tokenizers.hf_tokenizer import Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def add(self, token_id: int) -> str:
        """Append one token; -> the full text so far."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self.text

    def flush(self) -> str:
        """At the end: emit what was held back (an incomplete character decodes as U+FFFD)."""
        if self.read_offset < len(self.ids):
            before = self._decode(self.ids[self.prefix_offset:self.read_offset])
            self.text += self._decode(self.ids[self.prefix_offset:])[len(before):]
            self.prefix_offset = self.read_offset = len(self.ids)
        return self.text
