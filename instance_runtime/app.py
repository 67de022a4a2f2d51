"""The FastAPI app: factory, lifespan, error mapping and routes.

Routes translate between wire formats and ``ModelRuntime``; the state lives on ``app.state``.
/health, /status and /metrics never touch the model or the generation worker, so they answer
while a model loads or a long generation runs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from instance_runtime import SERVICE_NAME, __version__
from instance_runtime.errors import ServiceError, UnsupportedRequest
from instance_runtime.generation import GenerationResult
from instance_runtime.gpu import process_ram_gb
from instance_runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from instance_runtime.runtime import GenerationStream, ModelRuntime
from instance_runtime.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    GenerateChoice,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    StatusResponse,
    Usage,
)
from instance_runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)


def _timestamp() -> str:
    # The seed's format: ISO 8601 to the second, no zone (UTC).
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def _usage(result: GenerationResult) -> Usage:
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.total_tokens,
    )


def _error_body(message: str, error_type: str, param: str | None, code: int) -> dict[str, Any]:
    # OpenAI's error shape, which the openai client turns into its typed exceptions.
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _sse(payload: BaseModel | dict[str, Any]) -> str:
    data = (
        payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    )
    return f"data: {data}\n\n"


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def get_runtime(request: Request) -> ModelRuntime:
    runtime: ModelRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]


def _error_param(error: Mapping[str, Any]) -> str:
    """("body", "messages", 0, "role") -> "messages.0.role"; unparsable JSON -> "body"."""
    if error.get("type") == "json_invalid":
        return "body"
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    return ".".join(loc) or "body"


def _register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return JSONResponse(
            _error_body(exc.message, exc.error_type, exc.param, exc.status_code),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        params = [_error_param(e) for e in errors] or ["body"]
        message = "; ".join(f"{p}: {e.get('msg')}" for p, e in zip(params, errors, strict=False))
        body = _error_body(message or "body: invalid request", "invalid_request_error", params[0], 422)
        # FastAPI's own list too, less the echoed input (a too-long prompt would come back whole).
        detail = [{k: v for k, v in e.items() if k not in ("input", "url")} for e in errors]
        body["detail"] = jsonable_encoder(detail, custom_encoder={Exception: str})
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse(_error_body(message, "internal_error", None, 500), status_code=500)


def create_app(settings: RuntimeSettings | None = None) -> FastAPI:
    settings = settings or RuntimeSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ModelRuntime(settings)
        app.state.runtime = runtime
        runtime.start_loading()
        log.info("%s %s serving %s on port %d", SERVICE_NAME, __version__, runtime.model_name, settings.port)
        yield
        await runtime.shutdown()

    app = FastAPI(title=SERVICE_NAME, version=__version__, lifespan=lifespan)
    app.state.settings = settings
    _register_error_handlers(app)
    _add_service_routes(app)
    _add_openai_routes(app)
    return app


def _add_service_routes(app: FastAPI) -> None:
    # HEAD too: uptime monitors often probe with it.
    @app.api_route("/health", methods=["GET", "HEAD"], response_model=HealthResponse)
    async def health() -> HealthResponse:
        # Alive is all it says: it must answer even while the model loads or generates.
        return HealthResponse(timestamp=_timestamp())

    @app.api_route(
        "/status",
        methods=["GET", "HEAD"],
        response_model=StatusResponse,
        responses={503: {"model": StatusResponse}},
    )
    def status(runtime: RuntimeDep) -> JSONResponse:
        # A plain def: NVML and psutil calls run in the thread pool, off the event loop.
        used, total = runtime.gpu.memory_mib()
        body = StatusResponse(
            status=runtime.status,
            model=runtime.model_name,
            gpu_memory_used=used,
            gpu_memory_total=total,
            ram_usage_gb=process_ram_gb(),
            port=runtime.settings.port,
            timestamp=_timestamp(),
            service=SERVICE_NAME,
            error=runtime.error,
            load=runtime.load.as_dict() if runtime.load is not None else None,
            last_request_at=_iso(runtime.last_request_at),
            adapters=runtime.adapter_names,
        ).model_dump()
        if body["error"] is None:
            del body["error"]
        return JSONResponse(body, status_code=200 if runtime.status == "healthy" else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics(runtime: RuntimeDep) -> Response:
        # A plain def, like /status: the GPU gauge asks NVML.
        return Response(runtime.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/generate", response_model=GenerateResponse)
    async def generate(request: GenerateRequest, runtime: RuntimeDep) -> GenerateResponse:
        prepared = runtime.prepare(
            request.prompt,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop_strings(),
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            prompt_field="prompt",
            chat=False,
        )
        result = await runtime.generate(prepared)
        now = datetime.now(UTC)
        return GenerateResponse(
            choices=[GenerateChoice(text=result.text, finish_reason=result.finish_reason)],
            usage=_usage(result),
            model=runtime.model_name,
            created=int(now.timestamp()),
            # The seed's "gen-YYYYMMDD-HHMMSS", made unique within the second.
            id=f"gen-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}",
        )


def _add_openai_routes(app: FastAPI) -> None:
    started = int(time.time())

    @app.get("/v1/models", response_model=ModelList)
    async def models(runtime: RuntimeDep) -> ModelList:
        engine = runtime.engine
        if engine is None:
            return ModelList(data=[ModelCard(id=runtime.model_name, created=started)])
        return ModelList(
            data=[
                ModelCard(
                    id=served.id,
                    created=started,
                    max_model_len=engine.context_length,
                    parent=served.parent,
                    root=served.root,
                )
                for served in engine.served_models
            ]
        )

    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(request: CompletionRequest, runtime: RuntimeDep) -> Any:
        model = runtime.resolve_model(request.model)
        prompt = request.prompt_text()
        prepared = runtime.prepare(
            prompt,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop_strings(),
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            prompt_field="prompt",
            chat=False,
            model=model,
        )
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        prefix = prompt if request.echo else ""
        if request.stream:
            stream = runtime.open_stream(prepared)
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(
                _completion_events(stream, completion_id, created, model, prefix, include_usage),
                media_type="text/event-stream",
                headers=_SSE_HEADERS,
            )
        result = await runtime.generate(prepared)
        return CompletionResponse(
            id=completion_id,
            created=created,
            model=model,
            choices=[CompletionChoice(text=prefix + result.text, finish_reason=result.finish_reason)],
            usage=_usage(result),
        )

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(request: ChatCompletionRequest, runtime: RuntimeDep) -> Any:
        model = runtime.resolve_model(request.model)
        engine = runtime.ready_engine()
        if not engine.has_chat_template:
            raise UnsupportedRequest(
                "this model's tokenizer has no chat template; use /v1/completions", param="messages"
            )
        messages = [
            # Most templates predate OpenAI's "developer" role; it means "system".
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in request.messages
        ]
        prepared = runtime.prepare(
            engine.render_chat(messages),
            max_tokens=request.requested_max_tokens(),
            max_tokens_field="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop_strings(),
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            prompt_field="messages",
            chat=True,
            model=model,
        )
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            stream = runtime.open_stream(prepared)
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(
                _chat_events(stream, completion_id, created, model, include_usage),
                media_type="text/event-stream",
                headers=_SSE_HEADERS,
            )
        result = await runtime.generate(prepared)
        return ChatCompletionResponse(
            id=completion_id,
            created=created,
            model=model,
            choices=[
                ChatChoice(message=ChatMessageOut(content=result.text), finish_reason=result.finish_reason)
            ],
            usage=_usage(result),
        )


async def _completion_events(
    stream: GenerationStream, completion_id: str, created: int, model: str, prefix: str, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(text: str, finish_reason: Any = None, usage: Usage | None = None) -> str:
        choices = [] if usage is not None else [CompletionChoice(text=text, finish_reason=finish_reason)]
        return _sse(
            CompletionResponse(id=completion_id, created=created, model=model, choices=choices, usage=usage)
        )

    try:
        if prefix:
            yield chunk(prefix)
        async for delta in stream:
            yield chunk(delta)
        result = await stream.result()
        yield chunk("", result.finish_reason)
        if include_usage:
            yield chunk("", usage=_usage(result))
    except ServiceError as exc:
        # Headers are already sent: the error travels as an event, as OpenAI does.
        yield _sse(_error_body(exc.message, exc.error_type, exc.param, exc.status_code))
    finally:
        stream.abort()
    yield "data: [DONE]\n\n"


async def _chat_events(
    stream: GenerationStream, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(delta: ChatDelta, finish_reason: Any = None) -> str:
        choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason)
        return _sse(ChatCompletionChunk(id=completion_id, created=created, model=model, choices=[choice]))

    try:
        yield chunk(ChatDelta(role="assistant", content=""))
        async for delta in stream:
            yield chunk(ChatDelta(content=delta))
        result = await stream.result()
        yield chunk(ChatDelta(), result.finish_reason)
        if include_usage:
            usage_chunk = ChatCompletionChunk(
                id=completion_id, created=created, model=model, choices=[], usage=_usage(result)
            )
            yield _sse(usage_chunk)
    except ServiceError as exc:
        yield _sse(_error_body(exc.message, exc.error_type, exc.param, exc.status_code))
    finally:
        stream.abort()
    yield "data: [DONE]\n\n"
