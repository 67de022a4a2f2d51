"""The service's state: model loading in the background, request admission, generation runs.

Kept apart from the routes so that each route is a thin translation between a wire format and
these calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from instance_runtime.errors import ConfigurationError, GenerationFailed, InvalidRequest, ModelNotReady
from instance_runtime.generation import GenerationResult, SamplingParams
from instance_runtime.gpu import GpuMonitor
from instance_runtime.scheduler import GenerationScheduler
from instance_runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from instance_runtime.engine import Engine

log = logging.getLogger(__name__)

ModelStatus = Literal["loading", "healthy", "error"]


@dataclass(frozen=True)
class PreparedPrompt:
    token_ids: list[int]
    params: SamplingParams


class GenerationStream:
    """Text deltas of one running generation, then its result."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.future: asyncio.Future[GenerationResult] | None = None
        self.cancel: threading.Event | None = None

    def push_threadsafe(self, item: str | None) -> None:
        # The loop may already be closed when a cancelled generation ends during shutdown.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def result(self) -> GenerationResult:
        assert self.future is not None
        try:
            return await self.future
        except Exception as exc:
            log.error("generation failed: %s", "".join(traceback.format_exception(exc)))
            raise GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc

    def on_done(self, future: asyncio.Future[GenerationResult]) -> None:
        # A job dropped before it started (shutdown) never runs its finally: end the stream here
        # too. And mark a failure as seen, in case the client left and nobody awaits the result.
        if not future.cancelled():
            future.exception()
        self._queue.put_nowait(None)

    def abort(self) -> None:
        """The client went away: stop generating at the next token (a no-op once finished)."""
        if self.cancel is not None:
            self.cancel.set()


class ModelRuntime:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.model_name = settings.served_model_name
        self.status: ModelStatus = "loading"
        self.error: str | None = None
        self.engine: Engine | None = None
        self.gpu = GpuMonitor()
        self.scheduler = GenerationScheduler(settings.queue_size, settings.retry_after_s)
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
            from instance_runtime.engine import Engine  # torch + transformers: seconds to import

            engine = Engine.load(self.settings)
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

    def ready_engine(self) -> Engine:
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

    async def generate(self, prepared: PreparedPrompt) -> GenerationResult:
        engine = self.ready_engine()
        future, _ = self.scheduler.submit(
            lambda cancel: engine.generate(prepared.token_ids, prepared.params, cancel=cancel)
        )
        try:
            return await future
        except Exception as exc:
            log.error("generation failed: %s", "".join(traceback.format_exception(exc)))
            raise GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc

    def open_stream(self, prepared: PreparedPrompt) -> GenerationStream:
        """Admit a streaming generation now (so a full queue is an HTTP 503, not a broken stream)."""
        engine = self.ready_engine()
        stream = GenerationStream(asyncio.get_running_loop())

        def job(cancel: threading.Event) -> GenerationResult:
            try:
                return engine.generate(
                    prepared.token_ids, prepared.params, on_text=stream.push_threadsafe, cancel=cancel
                )
            finally:
                stream.push_threadsafe(None)

        stream.future, stream.cancel = self.scheduler.submit(job)
        stream.future.add_done_callback(stream.on_done)
        return stream

    async def shutdown(self) -> None:
        # uvicorn has already waited up to SHUTDOWN_TIMEOUT_S for open requests; what is left has
        # no client. A short drain keeps the whole stop inside systemd's TimeoutStopSec.
        await self.scheduler.close(min(5.0, self.settings.shutdown_timeout_s))
        if self.engine is not None:
            self.engine.close()
            self.engine = None
