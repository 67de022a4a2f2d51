"""The service's state: model loading in the background, request admission, generation runs.

Kept apart from the routes so that each route is a thin translation between a wire format and
these calls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from instance_runtime.errors import (
    ConfigurationError,
    GenerationFailed,
    InvalidRequest,
    ModelNotFound,
    ModelNotReady,
)
from instance_runtime.generation import GenerationResult, SamplingParams
from instance_runtime.gpu import GpuMonitor
from instance_runtime.metrics import ServiceMetrics
from instance_runtime.scheduler import Admission
from instance_runtime.serving import EngineStats, RequestHandle, ServingEngine, load_engine
from instance_runtime.settings import RuntimeSettings, parse_adapters
from instance_runtime.streaming import LoadFrom, LoadSource, StagedModel, choose_source, stage

log = logging.getLogger(__name__)

ModelStatus = Literal["loading", "healthy", "error"]


@dataclass(frozen=True)
class PreparedPrompt:
    token_ids: list[int]
    params: SamplingParams
    model: str | None = None  # the served model id it runs as (None: MODEL_NAME's)


class GenerationStream:
    """Text deltas of one running generation, then its result (what the routes see)."""

    def __init__(self, handle: RequestHandle) -> None:
        self.handle = handle

    async def __aiter__(self) -> AsyncIterator[str]:
        async for delta in self.handle:
            yield delta

    async def result(self) -> GenerationResult:
        try:
            return await self.handle.result()
        except Exception as exc:
            log.error("generation failed: %s", "".join(traceback.format_exception(exc)))
            raise GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc

    def abort(self) -> None:
        """The client went away: stop generating at the next step (a no-op once finished)."""
        self.handle.abort()


@dataclass
class LoadReport:
    """How this start loaded the model: /status's `load` and the journal's "loaded" line."""

    source: LoadFrom
    reason: str
    location: str  # the model folder, or its S3 folder when streamed
    started_at: float  # time.time() when the load began
    seconds: float | None = None  # start of the load to a healthy engine
    stage_seconds: float | None = None  # stream: listing S3 and fetching the small files
    streamed_bytes: int | None = None  # stream, transformers engine: tensor bytes the streamer read
    source_bytes: int | None = None  # stream: the safetensors' size in S3

    def as_dict(self) -> dict[str, object]:
        return {
            "from": self.source,
            "reason": self.reason,
            "location": self.location,
            "seconds": self.seconds,
            "stage_seconds": self.stage_seconds,
            "streamed_bytes": self.streamed_bytes,
            "source_bytes": self.source_bytes,
        }


class ModelRuntime:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.model_name = settings.served_model_name
        try:
            # Known before the load, for /status; a malformed value fails the load with its message.
            self.adapter_names: list[str] = list(parse_adapters(settings.adapters))
        except ConfigurationError:
            self.adapter_names = []
        self.status: ModelStatus = "loading"
        self.error: str | None = None
        self.engine: ServingEngine | None = None
        self.gpu = GpuMonitor()
        self.admission = Admission(settings.max_batch_size, settings.queue_size, settings.retry_after_s)
        self.metrics = ServiceMetrics(self.engine_stats, self.gpu)
        self._loader: threading.Thread | None = None
        self.load: LoadReport | None = None
        self._staged: StagedModel | None = None
        self.last_request_at: datetime | None = None

    # ----- loading -----------------------------------------------------------------------------

    def start_loading(self) -> None:
        # A thread, not the generation worker: shutdown must not wait for a half-done load.
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        started = time.monotonic()
        try:
            source: LoadSource = choose_source(self.settings)
            self.load = LoadReport(source.kind, source.reason, source.location, time.time())
            log.info("loading from %s (%s): %s", source.kind, source.reason, source.location)
            if source.kind == "stream":
                engine = self._load_streamed(source, started)
            else:
                if not self.settings.model_path.is_dir():  # say so before seconds of importing torch
                    raise ConfigurationError(f"MODEL_PATH {self.settings.model_path} is not a folder")
                # The engine's module imports torch (seconds): only here, never in the web layer.
                engine = load_engine(self.settings)
        except Exception as exc:
            log.error("model failed to load: %s", "".join(traceback.format_exception(exc)))
            self.error = f"{type(exc).__name__}: {exc}"
            self.status = "error"
            if self.load is not None:
                self.load.seconds = round(time.monotonic() - started, 3)
            self._drop_staged()
            return
        assert self.load is not None
        self.load.seconds = round(time.monotonic() - started, 3)
        info = getattr(getattr(engine, "model", None), "info", None)  # the transformers engine's LoadedInfo
        if self.load.source == "stream" and info is not None:
            self.load.streamed_bytes = int(info.streamed_bytes)
        log.info(
            "model loaded from %s in %.2fs: %s%s",
            self.load.source,
            self.load.seconds,
            self.load.location,
            f" ({self.load.source_bytes / (1 << 20):.1f} MiB of safetensors)"
            if self.load.source_bytes
            else "",
        )
        self.engine = engine
        self.status = "healthy"

    def _load_streamed(self, source: LoadSource, started: float) -> ServingEngine:
        assert self.load is not None
        staged = stage(source.location, self.settings.aws_region)
        self._staged = staged
        self.load.stage_seconds = round(time.monotonic() - started, 3)
        self.load.source_bytes = staged.shard_bytes
        # The engine reads config and tokenizer from the staged folder; the name stays MODEL_PATH's.
        settings = self.settings.model_copy(
            update={"model_path": staged.folder, "model_name": self.settings.served_model_name}
        )
        return load_engine(settings, staged)

    def _drop_staged(self) -> None:
        if self._staged is not None:
            self._staged.close()
            self._staged = None

    def wait_loaded(self, timeout: float | None = None) -> None:
        if self._loader is not None:
            self._loader.join(timeout)

    def engine_stats(self) -> EngineStats | None:
        return self.engine.stats() if self.engine is not None else None

    def ready_engine(self) -> ServingEngine:
        if self.status == "healthy" and self.engine is not None:
            return self.engine
        if self.status == "error":
            raise ModelNotReady(f"the model failed to load: {self.error}")
        raise ModelNotReady("the model is still loading", retry_after_s=self.settings.retry_after_s)

    def resolve_model(self, requested: str | None) -> str:
        """The served model id a request's ``model`` field selects; unknown names are a 404."""
        if requested is None or requested == self.model_name:
            return self.model_name
        if self.status == "healthy" and self.engine is not None:
            ids = [m.id for m in self.engine.served_models]
            if requested in ids:
                return requested
            served = ", ".join(repr(i) for i in ids)
        else:
            if self.settings.adapters:
                self.ready_engine()  # loading or failed: the names are not all known, so a 503
            served = repr(self.model_name)
        raise ModelNotFound(
            f"model {requested!r} is not served here; this service serves {served}", param="model"
        )

    # ----- admission ---------------------------------------------------------------------------

    def prepare(
        self,
        prompt: str,
        *,
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        stop: tuple[str, ...],
        seed: int | None,
        ignore_eos: bool,
        prompt_field: str,
        chat: bool,
        max_tokens_field: str = "max_tokens",
        model: str | None = None,
    ) -> PreparedPrompt:
        """Tokenize and check the limits that depend on the settings and the model."""
        engine = self.ready_engine()
        limit = self.settings.max_new_tokens
        if max_tokens is not None and max_tokens > limit:
            raise InvalidRequest(
                f"{max_tokens_field}: {max_tokens} is over this service's limit of {limit} (MAX_NEW_TOKENS)",
                param=max_tokens_field,
            )
        # A chat template already writes any BOS token it wants.
        token_ids = engine.encode(prompt, add_special_tokens=not chat)
        context = engine.context_length
        if not token_ids:
            raise InvalidRequest(f"{prompt_field}: the prompt encodes to no tokens", param=prompt_field)
        if len(token_ids) >= context:
            raise InvalidRequest(
                f"{prompt_field}: the prompt is {len(token_ids)} tokens, the context is {context} tokens",
                param=prompt_field,
            )
        room = context - len(token_ids)
        if max_tokens is None:
            max_tokens = min(self.settings.default_max_tokens, room)
        elif max_tokens > room:
            raise InvalidRequest(
                f"{max_tokens_field}: the prompt is {len(token_ids)} tokens, so at most {room} more fit in "
                f"the context of {context} tokens; {max_tokens} were asked for",
                param=max_tokens_field,
            )
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            ignore_eos=ignore_eos,
            seed=seed,
        )
        return PreparedPrompt(token_ids, params, model)

    # ----- generation --------------------------------------------------------------------------

    def _submit(self, prepared: PreparedPrompt, *, streaming: bool) -> RequestHandle:
        engine = self.ready_engine()
        self.admission.acquire()
        try:
            handle = engine.submit(
                prepared.token_ids, prepared.params, streaming=streaming, model=prepared.model
            )
        except BaseException:
            self.admission.release_now()
            raise
        self.admission.release_when_done(handle.done)
        handle.done.add_done_callback(lambda _: self._finished(handle))
        return handle

    def _finished(self, handle: RequestHandle) -> None:
        self.metrics.observe(handle)
        self.last_request_at = datetime.now(UTC)

    async def generate(self, prepared: PreparedPrompt) -> GenerationResult:
        stream = GenerationStream(self._submit(prepared, streaming=False))
        try:
            return await stream.result()
        except asyncio.CancelledError:
            stream.abort()
            raise

    def open_stream(self, prepared: PreparedPrompt) -> GenerationStream:
        """Admit a streaming generation now (so a full queue is an HTTP 503, not a broken stream)."""
        return GenerationStream(self._submit(prepared, streaming=True))

    async def shutdown(self) -> None:
        # uvicorn has already waited up to SHUTDOWN_TIMEOUT_S for open requests; what is left has
        # no client. A short drain keeps the whole stop inside systemd's TimeoutStopSec.
        drained = await self.admission.close(min(5.0, self.settings.shutdown_timeout_s))
        if self.engine is not None:
            if not drained:
                log.warning("shutdown: aborting %d unfinished generation(s)", self.admission.inflight)
                self.engine.abort_all()
            await self.engine.close()
            self.engine = None
        self._drop_staged()
