"""DeepSeek V4 reasoning split: whole-text and streaming agree at every split point."""

from __future__ import annotations

import pytest

from vllm.reasoning.deepseek_v4 import DeepseekV4ReasoningParser

P = DeepseekV4ReasoningParser
TOOLS = "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
CASES = [
    ("plan it</think>The answer.", ("plan it", "The answer.")),
    ("<think>plan</think>ok", ("plan", "ok")),
    ("no end marker at all", ("no end marker at all", "")),
    ("x < y and </thin is not the end</think>done", ("x < y and </thin is not the end", "done")),
    (f"call a tool\n\n{TOOLS}", ("call a tool", TOOLS)),  # </think> omitted before the tool block
    (f"r</think>c\n\n{TOOLS}", ("r", f"c\n\n{TOOLS}")),
    ("</think>", ("", "")),
]


@pytest.mark.parametrize("text,expect", CASES)
def test_whole_text_split(text, expect):
    assert P.extract(text, thinking=True) == expect


def test_chat_mode_is_all_content():
    assert P.extract("a</think>b", thinking=False) == (None, "a</think>b")


def _stream(pieces, thinking=True):
    p = P(thinking)
    r = c = ""
    for piece in pieces:
        dr, dc = p.feed(piece)
        r, c = r + dr, c + dc
    dr, dc = p.finish()
    return r + dr, c + dc


@pytest.mark.parametrize("text,expect", CASES)
def test_streaming_matches_at_every_boundary(text, expect):
    assert _stream(list(text)) == expect  # one character per delta
    for i in range(len(text) + 1):
        assert _stream([text[:i], text[i:]]) == expect, i
