"""DeepSeek V4 chat encoding (spec §6.2): one test per rule."""

from __future__ import annotations

import json

import pytest

from vllm.tokenizers.deepseek_v4_encoding import (BOS, EOS, MAX_EFFORT_PREAMBLE, TOOLS_INSTRUCTIONS, ChatEncodingError,
                                                  chat_options, encode_messages)

U, A = "<｜User｜>", "<｜Assistant｜>"
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_chat_mode_closes_thinking_and_uses_no_separators():
    p = encode_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert p == f"{BOS}Be brief.{U}Hi{A}</think>"


def test_thinking_mode_opens_thinking():
    assert encode_messages([{"role": "user", "content": "Hi"}], thinking=True) == f"{BOS}{U}Hi{A}<think>"


def test_multi_turn_drops_earlier_reasoning():
    msgs = [{"role": "user", "content": "a"},
            {"role": "assistant", "reasoning_content": "r1", "content": "c1"},
            {"role": "user", "content": "b"}]
    assert encode_messages(msgs, thinking=True) == f"{BOS}{U}a{A}</think>c1{EOS}{U}b{A}<think>"
    kept = encode_messages(msgs, thinking=True, drop_thinking=False)
    assert kept == f"{BOS}{U}a{A}<think>r1</think>c1{EOS}{U}b{A}<think>"


def test_tools_block_after_system_and_disables_drop_thinking():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
            {"role": "assistant", "reasoning_content": "r1", "content": "c1"}, {"role": "user", "content": "b"}]
    p = encode_messages(msgs, thinking=True, tools=[TOOL])
    assert p.startswith(f"{BOS}S\n\n{TOOLS_INSTRUCTIONS}" + json.dumps(TOOL["function"]) + U)
    assert "<think>r1</think>c1" in p  # reasoning kept when tools are present


def test_assistant_tool_calls_and_results_merged_in_call_order():
    msgs = [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": json.dumps({"city": "Paris", "days": 2})}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
            {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c1", "content": "rain"}]
    p = encode_messages(msgs, tools=[TOOL])
    block = ('\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n'
             '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
             '<｜DSML｜parameter name="days" string="false">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
             '<｜DSML｜invoke name="get_weather">\n<｜DSML｜parameter name="city" string="true">Rome</｜DSML｜parameter>\n'
             '</｜DSML｜invoke>\n</｜DSML｜tool_calls>')
    assert f"{A}</think>Checking.{block}{EOS}" in p
    assert p.endswith(f"{EOS}{U}<tool_result>rain</tool_result>\n\n<tool_result>sunny</tool_result>{A}</think>")


def test_max_effort_preamble_only_in_thinking_mode():
    msgs = [{"role": "user", "content": "x"}]
    assert encode_messages(msgs, thinking=True, reasoning_effort="max").startswith(BOS + MAX_EFFORT_PREAMBLE)
    assert MAX_EFFORT_PREAMBLE not in encode_messages(msgs, thinking=False, reasoning_effort="max")
    assert MAX_EFFORT_PREAMBLE not in encode_messages(msgs, thinking=True, reasoning_effort="high")


def test_developer_and_latest_reminder_roles():
    p = encode_messages([{"role": "developer", "content": "d"}, {"role": "latest_reminder", "content": "today"},
                         {"role": "user", "content": "u"}])
    assert p == f"{BOS}{U}d<｜latest_reminder｜>today{U}u{A}</think>"


def test_content_parts_and_errors():
    assert encode_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]) \
        == f"{BOS}{U}ab{A}</think>"
    with pytest.raises(ChatEncodingError, match="role must be"):
        encode_messages([{"role": "wizard", "content": "x"}])
    with pytest.raises(ChatEncodingError, match="nothing to generate"):
        encode_messages([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(ChatEncodingError, match="not JSON"):
        encode_messages([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "{bad"}}]}, {"role": "user", "content": "z"}])


@pytest.mark.parametrize("effort,kw,expect", [
    (None, None, (False, None)), (None, {"thinking": True}, (True, None)), (None, {"enable_thinking": True}, (True, None)),
    ("none", {"thinking": True}, (False, None)), ("max", None, (True, "max")), ("xhigh", None, (True, "max")),
    ("medium", None, (True, "high"))])
def test_chat_options_mapping(effort, kw, expect):
    assert chat_options(effort, kw) == expect
