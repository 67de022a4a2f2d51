"""The engine interface behind the routes, and the handle of one admitted request.

An engine turns token ids into text; the service around it (admission, wire formats, metrics)
is the same for every engine. ``transformers`` is implemented; ``vllm`` (AsyncLLMEngine in
process) fits the same shape: ``submit`` starts a task that feeds the handle from its output
stream, and the handle's abort calls ``engine.abort(request_id)``.

Pure Python (no torch): the web layer imports it before any model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from instance_runtime.errors import ConfigurationError, InvalidRequest
from instance_runtime.generation import GenerationResult, SamplingParams

if TYPE_CHECKING:
    from instance_runtime.settings import RuntimeSettings
    from instance_runtime.streaming import StagedModel

EngineKind = Literal["transformers", "vllm"]


class EngineUnavailable(ConfigurationError):
    """The configured engine cannot run here (not installed, or not built for this machine)."""


@dataclass(frozen=True)
class ServedModel:
    """One name the OpenAI ``model`` field may select: the base, or a LoRA adapter on it."""

    id: str
    parent: str | None = None  # an adapter's base id (vLLM's field); None for a full model
    root: str | None = None  # an adapter's folder


@dataclass(frozen=True)
class EngineStats:
    running: int  # requests in the running batch
    waiting: int  # admitted, not yet in the batch
    steps: int = 0  # decode forwards over the batch
    row_steps: int = 0  # sum of batch sizes over those forwards (mean batch = row_steps / steps)
    peak_batch_size: int = 0


class RequestHandle:
    """One request in an engine: text deltas as they come (when streaming), then the result.

    The engine side (``first_token``, ``text``, ``finish``, ``fail``) may be called from any
    thread; the client side (iteration, ``result``, ``abort``) runs on the event loop.
    ``done`` resolves when the engine has really stopped working on the request, which is what
    frees its admission slot.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        streaming: bool,
        on_abort: Callable[[], None] | None = None,
    ) -> None:
        self._loop = loop
        self._streaming = streaming
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._cancel = threading.Event()
        self._on_abort = on_abort
        self.done: asyncio.Future[GenerationResult] = loop.create_future()
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None

    # ----- engine side ---------------------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def first_token(self) -> None:
        self.first_token_at = time.monotonic()

    def text(self, delta: str) -> None:
        if self._streaming:
            self._call(self._queue.put_nowait, delta)

    def finish(self, result: GenerationResult) -> None:
        self.finished_at = time.monotonic()
        self._call(self._resolve, result, None)

    def fail(self, exc: BaseException) -> None:
        self.finished_at = time.monotonic()
        self._call(self._resolve, None, exc)

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        # The loop may already be closed when a cancelled generation ends during shutdown.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _resolve(self, result: GenerationResult | None, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
                self.done.exception()  # seen: the client may be gone and never await it
            else:
                assert result is not None
                self.done.set_result(result)
        self._queue.put_nowait(None)

    # ----- client side ---------------------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def result(self) -> GenerationResult:
        return await asyncio.shield(self.done)

    def abort(self) -> None:
        """The client went away: free the slot at the next step (a no-op once finished)."""
        if self.done.done() or self._cancel.is_set():
            return
        self._cancel.set()
        if self._on_abort is not None:
            self._on_abort()


class TokenizerPrompts:
    """Prompts through a Hugging Face tokenizer: what every engine here shares."""

    tokenizer: Any

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        import jinja2

        try:
            rendered = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
        except jinja2.TemplateError as exc:  # templates refuse e.g. a system role they do not know
            raise InvalidRequest(
                f"messages: the model's chat template refused them: {exc}", param="messages"
            ) from exc
        return str(rendered)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))


class ServingEngine(Protocol):
    """What the service needs from an engine. ``load`` (a classmethod) blocks; the rest is
    called on the event loop and must not block it."""

    kind: EngineKind
    context_length: int
    # Every name a request may select, MODEL_NAME's first (one entry without ADAPTERS).
    served_models: Sequence[ServedModel]

    @property
    def has_chat_template(self) -> bool: ...
    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str: ...
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, streaming: bool, model: str | None = None
    ) -> RequestHandle:
        """Start a request (admission is the caller's); the handle carries its output. ``model``
        is one of ``served_models``' ids (None: the first, MODEL_NAME's)."""
        ...

    def stats(self) -> EngineStats: ...

    def abort_all(self) -> None:
        """Stop every request at its next step (shutdown past the drain)."""
        ...

    async def close(self) -> None:
        """Stop the engine's workers and drop the weights."""
        ...


_ENGINES: dict[str, tuple[str, str]] = {
    "transformers": ("instance_runtime.transformers_engine", "TransformersEngine"),
    "vllm": ("instance_runtime.vllm_engine", "VllmEngine"),
}


def load_engine(settings: RuntimeSettings, staged: StagedModel | None = None) -> ServingEngine:
    """Import and load the engine that ENGINE names (blocking: seconds to minutes); with `staged`
    its weights are streamed from S3 (MODEL_PATH then is the staged folder of small files)."""
    module_name, class_name = _ENGINES[settings.engine]
    engine_class = getattr(importlib.import_module(module_name), class_name)
    engine: ServingEngine = engine_class.load(settings, staged)
    return engine
