"""The service's state: model loading in the background, request admission, generation runs.

Kept apart from the routes so that each route is a thin translation between a wire format and
these calls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from instance_runtime.errors import ConfigurationError, GenerationFailed, InvalidRequest, ModelNotReady
from instance_runtime.generation import GenerationResult, SamplingParams
from instance_runtime.gpu import GpuMonitor
from instance_runtime.metrics import ServiceMetrics
from instance_runtime.scheduler import Admission
from instance_runtime.serving import EngineStats, RequestHandle, ServingEngine, load_engine
from instance_runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

ModelStatus = Literal["loading", "healthy", "error"]


@dataclass(frozen=True)
class PreparedPrompt:
    token_ids: list[int]
    params: SamplingParams


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


class ModelRuntime:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.model_name = settings.served_model_name
        self.status: ModelStatus = "loading"
        self.error: str | None = None
        self.engine: ServingEngine | None = None
        self.gpu = GpuMonitor()
        self.admission = Admission(settings.max_batch_size, settings.queue_size, settings.retry_after_s)
        self.metrics = ServiceMetrics(self.engine_stats, self.gpu)
        self._loader: threading.Thread | None = None

    # ----- loading -----------------------------------------------------------------------------

    def start_loading(self) -> None:
        # A thread, not the generation worker: shutdown must not wait for a half-done load.
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            if not self.settings.model_path.is_dir():  # say so before seconds of importing torch
                raise ConfigurationError(f"MODEL_PATH {self.settings.model_path} is not a folder")
            # The engine's module imports torch (seconds): only here, never in the web layer.
            engine = load_engine(self.settings)
        except Exception as exc:
            log.error("model failed to load: %s", "".join(traceback.format_exception(exc)))
            self.error = f"{type(exc).__name__}: {exc}"
            self.status = "error"
            return
        self.engine = engine
        self.status = "healthy"

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
        return PreparedPrompt(token_ids, params)

    # ----- generation --------------------------------------------------------------------------

    def _submit(self, prepared: PreparedPrompt, *, streaming: bool) -> RequestHandle:
        engine = self.ready_engine()
        self.admission.acquire()
        try:
            handle = engine.submit(prepared.token_ids, prepared.params, streaming=streaming)
        except BaseException:
            self.admission.release_now()
            raise
        self.admission.release_when_done(handle.done)
        handle.done.add_done_callback(lambda _: self.metrics.observe(handle))
        return handle

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
