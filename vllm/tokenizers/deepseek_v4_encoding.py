"""DeepSeek V4 prompt encoding (spec §6.2): OpenAI-style messages -> the prompt string.

DeepSeek V4 ships no Jinja template; its prompt format is:

    BOS [max-effort preamble] {system} [\\n\\n## Tools ...] [\\n\\n## Response Format ...]
    <｜User｜>{user}<｜Assistant｜> then "<think>" (thinking) or "</think>" (chat)
    {reasoning}</think>{content}[\\n\\n<｜DSML｜tool_calls>...</｜DSML｜tool_calls>]EOS
    <｜User｜><tool_result>{result}</tool_result>[\\n\\n<tool_result>...]<｜Assistant｜>...

No separators between turns. `tool` messages merge into the next user turn (ordered by the
assistant's tool calls). `developer` renders as a user turn, `latest_reminder` as
`<｜latest_reminder｜>{content}`. Assistant turns before the last user message lose their
reasoning (`drop_thinking`, off when tools are present) and render as chat-mode turns.
The wording of the tool instructions and of the max-effort preamble is ours.
"""

from __future__ import annotations

import json
from typing import Any

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT, REMINDER = "<｜User｜>", "<｜Assistant｜>", "<｜latest_reminder｜>"
THINK, END_THINK = "<think>", "</think>"
DSML = "｜DSML｜"
TOOL_CALLS_START, TOOL_CALLS_END = f"<{DSML}tool_calls>", f"</{DSML}tool_calls>"

MAX_EFFORT_PREAMBLE = ("Reasoning effort: maximum. Think the problem through completely before answering, "
                       "checking each step and considering alternatives. Take as long as the task needs.\n\n")

TOOLS_INSTRUCTIONS = f"""## Tools

You can call the tools listed below. To call tools, end your reply with one block in exactly this form:
{TOOL_CALLS_START}
<{DSML}invoke name="TOOL_NAME">
<{DSML}parameter name="PARAM" string="true">text written as is</{DSML}parameter>
<{DSML}parameter name="OTHER" string="false">a JSON value (number, boolean, null, array or object)</{DSML}parameter>
</{DSML}invoke>
{TOOL_CALLS_END}
Use string="true" for string parameters and string="false" for every other type. Several invoke
elements may appear in one block. Tool results come back in <tool_result> tags in the next turn.

### Available Tool Schemas
"""


class ChatEncodingError(ValueError):
    pass


def _text(content: Any) -> str:
    """Message content: a string, None, or OpenAI content parts (text parts only)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text":
                raise ChatEncodingError(f"unsupported content part {p!r}: only text parts are supported")
            parts.append(p.get("text", ""))
        return "".join(parts)
    raise ChatEncodingError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def tools_block(tools: list[dict]) -> str:
    lines = []
    for t in tools:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or "name" not in fn:
            raise ChatEncodingError(f"a tool must be {{'type': 'function', 'function': {{'name': ...}}}}, got {t!r}")
        lines.append(json.dumps(fn, ensure_ascii=False))
    return "\n\n" + TOOLS_INSTRUCTIONS + "\n".join(lines)


def encode_tool_calls(tool_calls: list[dict]) -> str:
    """OpenAI `tool_calls` of an assistant message -> the DSML block (with its leading blank line)."""
    invokes = []
    for call in tool_calls:
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise ChatEncodingError(f"tool call {fn.get('name')!r} has arguments that are not JSON: {e}") from None
        params = []
        for k, v in args.items():
            if isinstance(v, str):
                params.append(f'<{DSML}parameter name="{k}" string="true">{v}</{DSML}parameter>')
            else:
                params.append(f'<{DSML}parameter name="{k}" string="false">{json.dumps(v, ensure_ascii=False)}'
                              f'</{DSML}parameter>')
        invokes.append(f'<{DSML}invoke name="{fn["name"]}">\n' + "".join(p + "\n" for p in params) + f"</{DSML}invoke>")
    return "\n\n" + TOOL_CALLS_START + "\n" + "\n".join(invokes) + "\n" + TOOL_CALLS_END


def _tool_results(msgs: list[dict], calls_order: list[str]) -> str:
    order = {cid: i for i, cid in enumerate(calls_order)}
    ranked = sorted(enumerate(msgs), key=lambda im: (order.get(im[1].get("tool_call_id"), len(order)), im[0]))
    return "\n\n".join(f"<tool_result>{_text(m.get('content'))}</tool_result>" for _, m in ranked)


def encode_messages(messages: list[dict], thinking: bool = False, drop_thinking: bool = True,
                    reasoning_effort: str | None = None, tools: list[dict] | None = None,
                    response_format: dict | None = None, add_generation_prompt: bool = True) -> str:
    """-> the prompt string (BOS included; tokenize it without adding special tokens)."""
    if not messages:
        raise ChatEncodingError("messages must not be empty")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool", "developer",
                                                              "latest_reminder"):
            raise ChatEncodingError(f"unsupported message {m!r}: role must be system, user, assistant, tool, "
                                    f"developer or latest_reminder")
    drop = drop_thinking and not tools and not any(m.get("tools") for m in messages)
    last_user = max((i for i, m in enumerate(messages) if m["role"] in ("user", "developer", "tool")), default=-1)
    out = [BOS]
    if thinking and reasoning_effort == "max":
        out.append(MAX_EFFORT_PREAMBLE)
    head, i = [], 0
    while i < len(messages) and messages[i]["role"] == "system":
        head.append(_text(messages[i].get("content")))
        tools = tools or messages[i].get("tools")
        i += 1
    out.append("\n\n".join(head))
    if tools:
        out.append(tools_block(tools))
    if response_format and response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema", response_format.get("json_schema"))
        out.append("\n\n## Response Format:\n\nReply with JSON that follows this schema:\n"
                   + json.dumps(schema, ensure_ascii=False))
    pending_tools: list[dict] = []
    calls_order: list[str] = []
    open_turn = False  # a user turn was written and awaits its "<｜Assistant｜>"
    for idx in range(i, len(messages)):
        m = messages[idx]
        role = m["role"]
        if role == "tool":
            pending_tools.append(m)
            continue
        if pending_tools:
            out.append(USER + _tool_results(pending_tools, calls_order))
            pending_tools, open_turn = [], True
        if role in ("user", "developer"):
            out.append(USER + _text(m.get("content")))
            open_turn = True
        elif role == "latest_reminder":
            out.append(REMINDER + _text(m.get("content")))
        elif role == "system":
            out.append(_text(m.get("content")))
        else:  # assistant
            keep_reasoning = thinking and not (drop and idx < last_user)
            out.append(ASSISTANT + (THINK if keep_reasoning else END_THINK))
            if keep_reasoning:
                out.append(_text(m.get("reasoning_content", m.get("reasoning"))) + END_THINK)
            out.append(_text(m.get("content")))
            calls = m.get("tool_calls") or []
            if calls:
                out.append(encode_tool_calls(calls))
                calls_order = [c.get("id") for c in calls]
            out.append(EOS)
            open_turn = False
    if pending_tools:
        out.append(USER + _tool_results(pending_tools, calls_order))
        open_turn = True
    if add_generation_prompt:
        if not open_turn and messages[-1]["role"] == "assistant":
            raise ChatEncodingError("the last message is an assistant turn: there is nothing to generate; "
                                    "end with a user or tool message")
        out.append(ASSISTANT + (THINK if thinking else END_THINK))
    return "".join(out)


def chat_options(reasoning_effort: str | None, chat_template_kwargs: dict | None) -> tuple[bool, str | None]:
    """OpenAI request fields -> (thinking, reasoning effort) as vLLM maps them for DeepSeek V4:
    thinking from chat_template_kwargs `thinking`/`enable_thinking`; reasoning_effort 'none' turns
    thinking off, 'max'/'xhigh' -> 'max', any other value -> 'high' (and turns thinking on)."""
    kw = chat_template_kwargs or {}
    thinking = bool(kw.get("thinking", kw.get("enable_thinking", False)))
    effort = None
    if reasoning_effort is not None:
        if reasoning_effort == "none":
            thinking = False
        else:
            thinking, effort = True, "max" if reasoning_effort in ("max", "xhigh") else "high"
    return thinking, effort
