"""/v1/completions and /v1/chat/completions over AsyncLLM: request -> SamplingParams -> outputs,
as whole responses or SSE chunks ending in `data: [DONE]`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from vllm.engine.async_llm import AsyncLLM
from vllm.logits_processors import ForcedContinuation
from vllm.entrypoints.chat_utils import render_chat
from vllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.reasoning.deepseek_v4 import DeepseekV4ReasoningParser
from vllm.sampling_params import SamplingParams
from vllm.tokenizers.deepseek_v4_encoding import DSML, END_THINK, TOOL_CALLS_START, ChatEncodingError
from vllm.tool_parsers.deepseek_v4 import DeepseekV4ToolParser


@dataclass(frozen=True)
class ServingOptions:
    model_name: str
    max_model_len: int
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    enable_auto_tool_choice: bool = False


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _context_error(limit: int, prompt_len: int, max_tokens: int | None) -> OpenAIError:
    asked = max_tokens if max_tokens is not None else 1
    return OpenAIError(
        f"This model's maximum context length is {limit} tokens. However, you requested {asked} output tokens and "
        f"your prompt contains at least {prompt_len} input tokens, for a total of at least {prompt_len + asked} "
        f"tokens. Please reduce the length of the input prompt or the number of requested output tokens.",
        param="input_tokens")


def make_params(req, max_tokens: int | None, logprobs: int | None, prompt_len: int, limit: int,
                skip_special_tokens: bool) -> SamplingParams:
    if prompt_len >= limit or (max_tokens is not None and prompt_len + max_tokens > limit):
        raise _context_error(limit, prompt_len, max_tokens)
    fields = {k: getattr(req, k) for k in ("n", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
                                           "ignore_eos", "min_tokens", "include_stop_str_in_output")
              if getattr(req, k) is not None}
    try:
        return SamplingParams(temperature=1.0 if req.temperature is None else req.temperature, max_tokens=max_tokens,
                              logprobs=logprobs, skip_special_tokens=skip_special_tokens, **fields)
    except ValueError as e:
        raise OpenAIError(str(e)) from None


async def _final(gen: AsyncIterator[RequestOutput]) -> RequestOutput:
    last = None
    async for last in gen:
        pass
    return last


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class OpenAIServing:
    def __init__(self, llm: AsyncLLM, opts: ServingOptions):
        self.llm, self.opts = llm, opts

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.opts.model_name:
            raise OpenAIError(f"The model `{name}` does not exist.", 404, "NotFoundError", "model")

    # -- completions -------------------------------------------------------------------------------
    def _prompts(self, prompt) -> list[tuple[str | None, list[int]]]:
        tok = self.llm.tokenizer
        if isinstance(prompt, list) and any(isinstance(p, int) for p in prompt):
            if not all(isinstance(p, int) for p in prompt):
                raise OpenAIError("prompt mixes token ids with other items", param="prompt")
            prompt = [prompt]
        items = [prompt] if isinstance(prompt, str) else list(prompt)
        if not items:
            raise OpenAIError("prompt must not be empty", param="prompt")
        out = []
        for p in items:
            if isinstance(p, str):
                if tok is None:
                    raise OpenAIError("text prompts need a tokenizer", param="prompt")
                out.append((p, tok.encode(p)))
            else:
                out.append((None, list(p)))
        return out

    async def completions(self, req: CompletionRequest):
        self.check_model(req.model)
        prompts = self._prompts(req.prompt)
        rid = f"cmpl-{uuid.uuid4().hex}"
        params = [make_params(req, req.max_tokens, req.logprobs, len(ids), self.opts.max_model_len,
                              req.skip_special_tokens) for _, ids in prompts]
        gens = [self.llm.generate({"prompt": text, "prompt_token_ids": ids}, p, f"{rid}-{i}")
                for i, ((text, ids), p) in enumerate(zip(prompts, params))]
        if req.stream:
            return self._stream_completions(req, rid, prompts, gens)
        try:
            finals = await asyncio.gather(*(_final(g) for g in gens))
        finally:
            for g in gens:
                await g.aclose()
        choices, n_out = [], 0
        for i, out in enumerate(finals):
            for c in out.outputs:
                text = ((prompts[i][0] or "") if req.echo else "") + c.text
                choices.append({"index": i * req.n + c.index, "text": text, "logprobs": self._cmpl_logprobs(c, req),
                                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason})
                n_out += len(c.token_ids)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": self.opts.model_name,
                "choices": choices, "usage": _usage(sum(len(ids) for _, ids in prompts), n_out)}

    def _cmpl_logprobs(self, c: CompletionOutput, req: CompletionRequest) -> dict | None:
        if req.logprobs is None or c.logprobs is None:
            return None
        toks, lps, tops, offs, pos = [], [], [], [], 0
        for tid, d in zip(c.token_ids, c.logprobs):
            s = d[tid].decoded_token or ""
            toks.append(s)
            lps.append(d[tid].logprob)
            tops.append({(lp.decoded_token or ""): lp.logprob for t, lp in d.items() if lp.rank and lp.rank <= req.logprobs}
                        if req.logprobs else None)
            offs.append(pos)
            pos += len(s)
        return {"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}

    async def _stream_completions(self, req: CompletionRequest, rid: str, prompts, gens) -> AsyncIterator[str]:
        created, sent, n_out = int(time.time()), {}, 0
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, g):
            try:
                async for out in g:
                    await queue.put((i, out))
            except BaseException as e:  # noqa: BLE001 - forwarded to the response
                await queue.put((i, e))
            finally:
                await queue.put((i, None))

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
        live = len(tasks)
        try:
            while live:
                i, out = await queue.get()
                if out is None:
                    live -= 1
                    continue
                if isinstance(out, BaseException):
                    yield sse(OpenAIError(f"internal error: {out}", 500, "InternalServerError").body())
                    break
                for c in out.outputs:
                    key = (i, c.index)
                    prev = sent.get(key, 0)
                    delta = c.text[prev:]
                    if prev == 0 and req.echo:
                        delta = (prompts[i][0] or "") + delta
                    sent[key] = len(c.text)
                    if delta or c.finish_reason:
                        yield sse({"id": rid, "object": "text_completion", "created": created,
                                   "model": self.opts.model_name,
                                   "choices": [{"index": i * req.n + c.index, "text": delta, "logprobs": None,
                                                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}]})
                    if c.finish_reason:
                        n_out += len(c.token_ids)
            if req.stream_options and req.stream_options.include_usage:
                yield sse({"id": rid, "object": "text_completion", "created": created, "model": self.opts.model_name,
                           "choices": [], "usage": _usage(sum(len(ids) for _, ids in prompts), n_out)})
            yield "data: [DONE]\n\n"
        finally:
            for t in tasks:
                t.cancel()
            for g in gens:
                await g.aclose()

    # -- chat --------------------------------------------------------------------------------------
    def _uses_tools(self, req: ChatCompletionRequest) -> bool:
        return bool(req.tools) and req.tool_choice != "none" and self.opts.tool_call_parser is not None

    def _check_tool_choice(self, req: ChatCompletionRequest) -> str | None:
        """Validate tool_choice; -> the DSML text a "required"/named choice forces the output to open with."""
        choice = req.tool_choice
        if choice in (None, "none"):
            return None
        if not req.tools:
            raise OpenAIError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
        if self.opts.tool_call_parser is None:
            raise OpenAIError(f"tool_choice {choice!r} requires --tool-call-parser deepseek_v4", param="tool_choice")
        if choice == "auto":
            if not self.opts.enable_auto_tool_choice:
                raise OpenAIError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be '
                                  'set', param="tool_choice")
            return None
        opening = f"\n\n{TOOL_CALLS_START}\n<{DSML}invoke name=\""
        if choice == "required":
            return opening
        name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        names = [t.get("function", {}).get("name") for t in req.tools]
        if name not in names:
            raise OpenAIError(f"tool_choice names function {name!r}, which is not among the tools {names}",
                              param="tool_choice")
        return opening + name + '">\n'

    @staticmethod
    def _forced_tool_call(tok, text: str, thinking: bool) -> ForcedContinuation:
        """Force the tool-call opening once reasoning is over (right away in chat mode); no EOS before it."""
        after = tok.token_to_id(END_THINK) if thinking else None
        return ForcedContinuation(tuple(tok.encode(text, add_special_tokens=False)), after,
                                  (tok.eos_token_id,) if tok.eos_token_id is not None else ())

    async def chat(self, req: ChatCompletionRequest):
        self.check_model(req.model)
        tok = self.llm.tokenizer
        if tok is None:
            raise OpenAIError("chat needs a tokenizer")
        forced_call = self._check_tool_choice(req)
        try:
            rendered = render_chat(tok, req.messages, req.tools if req.tool_choice != "none" else None,
                                   req.chat_template_kwargs, req.reasoning_effort)
        except ChatEncodingError as e:
            raise OpenAIError(str(e), param="messages") from None
        tools = self._uses_tools(req)
        max_tokens = req.max_completion_tokens or req.max_tokens
        top = (req.top_logprobs or 0) if req.logprobs else None
        params = make_params(req, max_tokens, top, len(rendered.prompt_token_ids), self.opts.max_model_len,
                             req.skip_special_tokens and not tools)  # ｜DSML｜ is a special token
        if forced_call is not None:
            params.logits_processors = [self._forced_tool_call(tok, forced_call, rendered.thinking)]
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        gen = self.llm.generate({"prompt": rendered.prompt, "prompt_token_ids": rendered.prompt_token_ids}, params, rid)
        split = self.opts.reasoning_parser is not None
        if req.stream:
            return self._stream_chat(req, rid, gen, rendered.thinking, split, tools, len(rendered.prompt_token_ids))
        try:
            out = await _final(gen)
        finally:
            await gen.aclose()
        choices, n_out = [], 0
        for c in out.outputs:
            parser = _ChatOutputParser(rendered.thinking, split, req.tools if tools else None)
            r1, content, calls = parser.feed(c.text)
            r2, c2, calls2 = parser.finish()
            reasoning = r1 + r2 if split and rendered.thinking else None
            content, calls = content + c2, calls + calls2
            msg = {"role": "assistant", "content": content if content or not calls else None,
                   "reasoning_content": reasoning,
                   "tool_calls": [{"id": k.id, "type": "function", "function": {"name": k.name,
                                                                                "arguments": k.arguments}}
                                  for k in calls]}
            choices.append({"index": c.index, "message": msg, "logprobs": self._chat_logprobs(c, req),
                            "finish_reason": "tool_calls" if calls else c.finish_reason, "stop_reason": c.stop_reason})
            n_out += len(c.token_ids)
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": self.opts.model_name,
                "choices": choices, "usage": _usage(len(out.prompt_token_ids), n_out)}

    @staticmethod
    def _chat_logprobs(c: CompletionOutput, req: ChatCompletionRequest, start: int = 0) -> dict | None:
        if not req.logprobs or c.logprobs is None:
            return None
        content = []
        for tid, d in list(zip(c.token_ids, c.logprobs))[start:]:
            s = d[tid].decoded_token or ""
            tops = sorted((lp for lp in d.values() if lp.rank and lp.rank <= (req.top_logprobs or 0)),
                          key=lambda lp: lp.rank)
            content.append({"token": s, "logprob": d[tid].logprob, "bytes": list(s.encode()),
                            "top_logprobs": [{"token": t.decoded_token or "", "logprob": t.logprob,
                                              "bytes": list((t.decoded_token or "").encode())} for t in tops]})
        return {"content": content}

    async def _stream_chat(self, req, rid, gen, thinking, split, tools, prompt_len) -> AsyncIterator[str]:
        base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.opts.model_name}
        streams: dict[int, _ChoiceStream] = {}
        n_out = 0
        try:
            async for out in gen:
                for c in out.outputs:
                    st = streams.get(c.index)
                    if st is None:
                        st = streams[c.index] = _ChoiceStream(_ChatOutputParser(thinking, split, req.tools if tools
                                                                                else None))
                        yield sse({**base, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                        "logprobs": None, "finish_reason": None}]})
                    delta = st.delta(c.text)
                    lp = self._chat_logprobs(c, req, st.tokens_sent)
                    st.tokens_sent = len(c.token_ids)
                    if delta or lp:
                        yield sse({**base, "choices": [{"index": c.index, "delta": delta, "logprobs": lp,
                                                        "finish_reason": None}]})
                    if c.finish_reason:
                        n_out += len(c.token_ids)
                        final, reason = st.finish(c.finish_reason)
                        yield sse({**base, "choices": [{"index": c.index, "delta": final, "logprobs": None,
                                                        "finish_reason": reason}]})
            if req.stream_options and req.stream_options.include_usage:
                yield sse({**base, "choices": [], "usage": _usage(prompt_len, n_out)})
            yield "data: [DONE]\n\n"
        except Exception as e:  # noqa: BLE001 - the stream has started: report in-band
            yield sse(OpenAIError(f"internal error: {e}", 500, "InternalServerError").body())
        finally:
            await gen.aclose()


class _ChatOutputParser:
    """Generated text -> (reasoning, content, tool calls), incrementally: the reasoning parser
    (when enabled) feeds the tool parser (when tools are in play)."""

    def __init__(self, thinking: bool, split_reasoning: bool, tools: list[dict] | None):
        self.reasoning = DeepseekV4ReasoningParser(thinking) if split_reasoning else None
        self.tools = DeepseekV4ToolParser(tools) if tools else None

    def _tools(self, reasoning: str, content: str, final: bool):
        if self.tools is None:
            return reasoning, content, []
        content, calls = self.tools.feed(content)
        if final:
            c2, calls2 = self.tools.finish()
            content, calls = content + c2, calls + calls2
        return reasoning, content, calls

    def feed(self, text: str):
        reasoning, content = self.reasoning.feed(text) if self.reasoning else ("", text)
        return self._tools(reasoning, content, final=False)

    def finish(self):
        reasoning, content = self.reasoning.finish() if self.reasoning else ("", "")
        return self._tools(reasoning, content, final=True)


class _ChoiceStream:
    """One streamed chat choice: turns cumulative text into OpenAI delta dicts."""

    def __init__(self, parser: _ChatOutputParser):
        self.parser = parser
        self.chars_sent = self.tokens_sent = self.num_calls = 0

    def _delta(self, reasoning: str, content: str, calls) -> dict:
        delta = {}
        if reasoning:
            delta["reasoning_content"] = reasoning
        if content:
            delta["content"] = content
        if calls:
            delta["tool_calls"] = [{"index": self.num_calls + k, "id": t.id, "type": "function",
                                    "function": {"name": t.name, "arguments": t.arguments}}
                                   for k, t in enumerate(calls)]
            self.num_calls += len(calls)
        return delta

    def delta(self, text: str) -> dict:
        new, self.chars_sent = text[self.chars_sent:], len(text)
        return self._delta(*self.parser.feed(new))

    def finish(self, finish_reason: str) -> tuple[dict, str]:
        delta = self._delta(*self.parser.finish())
        return delta, "tool_calls" if self.num_calls else finish_reason
