"""`--reasoning-parser deepseek_v4`: split generated text into reasoning_content and content.

In thinking mode the prompt ends with `<think>`, so output starts inside the reasoning; it ends
at `</think>`, or at a DSML tool-call block when the model omits `</think>` before calling a
tool (seen at long context), in which case the block starts the content. In chat mode the text
is all content. The streaming parser holds back a suffix that could be the start of a marker,
so any split of the text into deltas yields the same result as parsing it whole.
"""

from __future__ import annotations

from vllm.text_stream import emittable_prefix
from vllm.tokenizers.deepseek_v4_encoding import END_THINK, THINK, TOOL_CALLS_START

_ENDS = (END_THINK, TOOL_CALLS_START)


def _find_end(text: str) -> tuple[int, int] | None:
    """-> (reasoning end, content start) of the first end marker, or None."""
    hits = [(text.find(m), m) for m in _ENDS if m in text]
    if not hits:
        return None
    at, m = min(hits)
    if m == END_THINK:
        return at, at + len(m)
    cut = len(text[:at].rstrip("\n"))  # the blank line before a tool block belongs to neither
    return cut, at


class DeepseekV4ReasoningParser:
    def __init__(self, thinking: bool):
        self.thinking = thinking
        self._in_reasoning = thinking
        self._buf = ""
        self._started = False

    @staticmethod
    def extract(text: str, thinking: bool) -> tuple[str | None, str]:
        """Whole output -> (reasoning or None, content)."""
        p = DeepseekV4ReasoningParser(thinking)
        r, c = p.feed(text)
        r2, c2 = p.finish()
        reasoning = r + r2
        return (reasoning if thinking else None), c + c2

    def feed(self, delta: str) -> tuple[str, str]:
        """-> (reasoning delta, content delta)."""
        if not self._in_reasoning:
            return "", delta
        self._buf += delta
        if not self._started:  # a repeated "<think>" at the very start is not reasoning text
            if len(self._buf) < len(THINK) and THINK.startswith(self._buf):
                return "", ""
            if self._buf.startswith(THINK):
                self._buf = self._buf[len(THINK):]
            self._started = True
        end = _find_end(self._buf)
        if end is not None:
            reasoning, content = self._buf[:end[0]], self._buf[end[1]:]
            self._buf, self._in_reasoning = "", False
            return reasoning, content
        keep = emittable_prefix(self._buf, _ENDS)
        out, self._buf = self._buf[:keep], self._buf[keep:]
        return out, ""

    def finish(self) -> tuple[str, str]:
        """End of output: what was held back is reasoning (the block never closed)."""
        out, self._buf = self._buf, ""
        return (out, "") if self._in_reasoning else ("", out)
