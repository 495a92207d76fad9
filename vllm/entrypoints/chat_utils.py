"""Chat rendering shared by `LLM.chat` and the OpenAI server: messages -> prompt text and ids.

DeepSeek V4 checkpoints carry no Jinja template; the `deepseek_v4` tokenizer mode renders with
`tokenizers/deepseek_v4_encoding.py` (request `tools` join the system turn; thinking from
`chat_template_kwargs` or `reasoning_effort`) and tokenizes without adding special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.tokenizers.deepseek_v4_encoding import chat_options, encode_messages
from vllm.tokenizers.hf_tokenizer import Tokenizer


@dataclass(frozen=True)
class RenderedChat:
    prompt: str
    prompt_token_ids: list[int]
    thinking: bool
    """The prompt opened a reasoning block: the output starts with reasoning."""


def render_chat(tokenizer: Tokenizer, messages: list[dict], tools: list[dict] | None = None,
                chat_template_kwargs: dict | None = None, reasoning_effort: str | None = None,
                add_generation_prompt: bool = True) -> RenderedChat:
    thinking, effort = chat_options(reasoning_effort, chat_template_kwargs)
    kw = chat_template_kwargs or {}
    prompt = encode_messages(messages, thinking=thinking, drop_thinking=kw.get("drop_thinking", True),
                             reasoning_effort=effort, tools=tools, add_generation_prompt=add_generation_prompt)
    return RenderedChat(prompt, tokenizer.encode(prompt, add_special_tokens=False), thinking)
