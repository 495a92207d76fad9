"""DeepSeek V4 DSML tool parser: typing by schema, markup never in content, streaming == whole."""

from __future__ import annotations

import json

import pytest

from vllm.tokenizers.deepseek_v4_encoding import encode_tool_calls
from vllm.tool_parsers.deepseek_v4 import DeepseekV4ToolParser

TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
    "query": {"type": "string"}, "limit": {"type": "integer"}, "exact": {"type": "boolean"},
    "code": {"type": "string"}, "filters": {"type": "object"}}}}}]
D = "｜DSML｜"
BLOCK = (f'<{D}tool_calls>\n<{D}invoke name="search">\n'
         f'<{D}parameter name="query" string="true">cats & "dogs"</{D}parameter>\n'
         f'<{D}parameter name="limit" string="true">5</{D}parameter>\n'
         f'<{D}parameter name="exact" string="false">true</{D}parameter>\n'
         f'<{D}parameter name="code" string="false">7</{D}parameter>\n'
         f'<{D}parameter name="filters" string="false">{{"lang": "en"}}</{D}parameter>\n'
         f'</{D}invoke>\n<{D}invoke name="search">\n<{D}parameter name="query" string="true">x</{D}parameter>\n'
         f'</{D}invoke>\n</{D}tool_calls>')
FIRST = {"query": 'cats & "dogs"', "limit": 5, "exact": True, "code": "7", "filters": {"lang": "en"}}
CASES = [
    (f"Let me look.\n\n{BLOCK}", "Let me look.", [FIRST, {"query": "x"}]),
    (BLOCK, "", [FIRST, {"query": "x"}]),
    ("No tools here <｜DSML｜ just text", "No tools here <｜DSML｜ just text", []),
    (f"cut off\n\n<{D}tool_calls>\n<{D}invoke name=\"search\">\n<{D}parameter name=", "cut off", []),
    (f"{BLOCK}\nafter", "after", [FIRST, {"query": "x"}]),
]


def _args(calls):
    return [json.loads(c.arguments) for c in calls]


@pytest.mark.parametrize("text,content,args", CASES)
def test_whole_text(text, content, args):
    c, calls = DeepseekV4ToolParser(TOOLS).extract(text)
    assert c == content and _args(calls) == args and all(k.name == "search" for k in calls)
    assert "tool_calls>" not in c


@pytest.mark.parametrize("text,content,args", CASES)
def test_streaming_matches_at_every_boundary(text, content, args):
    def stream(pieces):
        p, c, calls = DeepseekV4ToolParser(TOOLS), "", []
        for piece in pieces:
            dc, dcalls = p.feed(piece)
            assert "tool_calls>" not in dc
            c, calls = c + dc, calls + dcalls
        dc, dcalls = p.finish()
        return c + dc, _args(calls + dcalls)

    assert stream(list(text)) == (content, args)
    for i in range(len(text) + 1):
        assert stream([text[:i], text[i:]]) == (content, args), i


def test_round_trip_with_the_encoder():
    calls = [{"function": {"name": "search", "arguments": json.dumps({"query": "q", "limit": 3, "exact": False})}}]
    content, parsed = DeepseekV4ToolParser(TOOLS).extract("ok" + encode_tool_calls(calls))
    assert content == "ok" and _args(parsed) == [{"query": "q", "limit": 3, "exact": False}]


def test_unknown_tool_keeps_json_typing():
    c, calls = DeepseekV4ToolParser(None).extract(BLOCK)
    assert _args(calls)[0]["limit"] == "5" and _args(calls)[0]["code"] == 7  # no schema: JSON typing
