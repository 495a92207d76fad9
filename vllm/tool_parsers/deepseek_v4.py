"""`--tool-call-parser deepseek_v4`: DSML tool-call blocks -> OpenAI tool calls.

    <｜DSML｜tool_calls>
    <｜DSML｜invoke name="NAME">
    <｜DSML｜parameter name="P" string="true">raw text</｜DSML｜parameter>
    <｜DSML｜parameter name="Q" string="false">JSON value</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜tool_calls>

string="true" values are taken as text, string="false" values as JSON; the tool's JSON schema
then types the value (a number sent as text becomes a number when the schema says so, and a
schema string keeps the raw text). The markup never reaches `content`: the blank line before the
block is dropped, an unterminated block (output cut by max_tokens) is dropped, calls are emitted
as each invoke closes. Streaming holds back any suffix that may start the block, so every split
of the text gives the same content and calls as parsing it whole.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from vllm.text_stream import emittable_prefix
from vllm.tokenizers.deepseek_v4_encoding import DSML, TOOL_CALLS_END, TOOL_CALLS_START

_INVOKE = re.compile(rf'<{DSML}invoke name="(.*?)">(.*?)</{DSML}invoke>', re.S)
_PARAM = re.compile(rf'<{DSML}parameter name="(.*?)" string="(true|false)">(.*?)</{DSML}parameter>', re.S)
_JSON_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list, "null": type(None)}


@dataclass
class ToolCall:
    name: str
    arguments: str
    """JSON object text."""
    id: str = field(default_factory=lambda: f"chatcmpl-tool-{uuid.uuid4().hex[:24]}")


def _schema_types(tools: list[dict] | None) -> dict[str, dict[str, Any]]:
    out = {}
    for t in tools or []:
        fn = t.get("function", t)
        props = (fn.get("parameters") or {}).get("properties") or {}
        out[fn.get("name")] = {k: (v or {}).get("type") for k, v in props.items()}
    return out


def _value(raw: str, is_string: bool, schema_type: Any) -> Any:
    types = schema_type if isinstance(schema_type, list) else [schema_type] if schema_type else []
    if is_string:
        if not types or "string" in types:
            return raw
        try:
            v = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        return v if any(isinstance(v, _JSON_TYPES[t]) for t in types if t in _JSON_TYPES) else raw
    try:
        v = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    if types == ["string"] and not isinstance(v, str):
        return raw
    return v


class DeepseekV4ToolParser:
    def __init__(self, tools: list[dict] | None = None):
        self.types = _schema_types(tools)
        self._phase = "content"  # -> "tools" -> "after"
        self._buf = ""
        self._after_started = False

    def _parse_invoke(self, name: str, body: str) -> ToolCall:
        types = self.types.get(name, {})
        args = {k: _value(v, s == "true", types.get(k)) for k, s, v in _PARAM.findall(body)}
        return ToolCall(name, json.dumps(args, ensure_ascii=False))

    def extract(self, text: str) -> tuple[str, list[ToolCall]]:
        """Whole output -> (content, calls)."""
        c, calls = self.feed(text)
        c2, calls2 = self.finish()
        return c + c2, calls + calls2

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        """-> (content delta, calls completed by this delta)."""
        self._buf += delta
        content, calls = "", []
        if self._phase == "content":
            at = self._buf.find(TOOL_CALLS_START)
            if at < 0:
                keep = emittable_prefix(self._buf, (TOOL_CALLS_START,))
                content, self._buf = self._buf[:keep], self._buf[keep:]
                return content, calls
            content = self._buf[:at].rstrip("\n")
            self._buf, self._phase = self._buf[at + len(TOOL_CALLS_START):], "tools"
        if self._phase == "tools":
            end = self._buf.find(TOOL_CALLS_END)
            scan = self._buf if end < 0 else self._buf[:end]
            last = 0
            for m in _INVOKE.finditer(scan):
                calls.append(self._parse_invoke(m.group(1), m.group(2)))
                last = m.end()
            if end < 0:
                self._buf = self._buf[last:]
                return content, calls
            self._buf, self._phase = self._buf[end + len(TOOL_CALLS_END):], "after"
        if self._phase == "after":
            if not self._after_started:  # whitespace between the block and any later text is dropped
                self._buf = self._buf.lstrip()
                self._after_started = bool(self._buf)
            content, self._buf = content + self._buf, ""
        return content, calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """End of output: held-back content is released; an unterminated block is dropped."""
        out, self._buf = self._buf, ""
        return (out, []) if self._phase == "content" else ("", [])
