"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of AsyncLLM."""

from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

import vllm
from vllm.engine.async_llm import AsyncLLM, EngineDeadError, RequestFailedError
from vllm.entrypoints.chat_utils import render_chat
from vllm.entrypoints.openai.metrics import render_metrics
from vllm.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                              OpenAIError, TokenizeRequest)
from vllm.entrypoints.openai.serving import OpenAIServing, ServingOptions
from vllm.tokenizers.deepseek_v4_encoding import ChatEncodingError

logger = logging.getLogger("vllm.api_server")


def _error(e: OpenAIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def build_app(llm: AsyncLLM, opts: ServingOptions, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="vllm-dsv4 OpenAI-compatible server")
    serving = OpenAIServing(llm, opts)

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(OpenAIError("Unauthorized: missing or wrong API key", 401, "AuthenticationError"))
        return await call_next(request)

    @app.exception_handler(OpenAIError)
    async def on_openai_error(_, e: OpenAIError):
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(OpenAIError(f"{param or 'request'}: {first.get('msg', 'invalid request')}", param=param))

    @app.exception_handler(ValueError)
    async def on_value_error(_, e: ValueError):
        return _error(OpenAIError(str(e)))

    @app.exception_handler(EngineDeadError)
    @app.exception_handler(RequestFailedError)
    async def on_engine_error(_, e: RuntimeError):
        return _error(OpenAIError(str(e), 500, "InternalServerError"))

    @app.exception_handler(Exception)
    async def on_internal(_, e: Exception):
        logger.exception("request failed")
        return _error(OpenAIError(f"internal error: {e!r}", 500, "InternalServerError"))

    @app.get("/health")
    async def health():
        return PlainTextResponse("", status_code=503 if llm.dead is not None else 200)

    @app.get("/version")
    async def version():
        return {"version": vllm.__version__}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": opts.model_name, "object": "model", "owned_by": "vllm",
                                            "root": opts.model_name, "max_model_len": opts.max_model_len}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(render_metrics(llm, opts.model_name), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        serving.check_model(req.model)
        tok = llm.tokenizer
        if tok is None:
            raise OpenAIError("the server runs without a tokenizer")
        if req.messages is not None:
            try:
                ids = render_chat(tok, req.messages).prompt_token_ids
            except ChatEncodingError as e:
                raise OpenAIError(str(e), param="messages") from None
        elif req.prompt is not None:
            ids = tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        else:
            raise OpenAIError("give `prompt` or `messages`", param="prompt")
        return {"tokens": ids, "count": len(ids), "max_model_len": opts.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        serving.check_model(req.model)
        if llm.tokenizer is None:
            raise OpenAIError("the server runs without a tokenizer")
        return {"prompt": llm.tokenizer.decode(req.tokens, skip_special_tokens=False)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        result = await serving.completions(req)
        return result if isinstance(result, dict) else StreamingResponse(result, media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest):
        result = await serving.chat(req)
        return result if isinstance(result, dict) else StreamingResponse(result, media_type="text/event-stream")

    return app
