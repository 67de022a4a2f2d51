"""ENGINE=transformers: continuous batching in one worker thread.

The worker loops: take what is queued into the free slots of the batch (one padded prefill),
then one decode step over the whole batch. With ADAPTERS a batch runs one served model: a
running batch takes in only requests of its own model from the head of the queue, so a request
of another model at the head waits for the batch to drain and then leads the next one (nothing
waits behind an endless stream of another adapter's requests). generate() would hold the event
loop for seconds (DESIGN 6); the worker keeps the model off it, so /health answers in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections import deque
from collections.abc import Mapping, Sequence

import torch

from instance_runtime.batching import BatchDecoder, BatchRequest
from instance_runtime.engine import Engine, release_cached_memory
from instance_runtime.generation import GenerationResult, SamplingParams
from instance_runtime.serving import EngineKind, EngineStats, RequestHandle, ServedModel
from instance_runtime.settings import RuntimeSettings
from instance_runtime.streaming import StagedModel

log = logging.getLogger(__name__)


class TransformersEngine:
    kind: EngineKind = "transformers"

    def __init__(self, model: Engine, max_batch_size: int) -> None:
        self.model = model
        self.context_length = model.context_length
        self.served_models: list[ServedModel] = model.served_models
        self._decoder = BatchDecoder(model, max_batch_size)
        self._waiting: deque[BatchRequest] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._running = 0
        self._worker = threading.Thread(target=self._run, name="generate", daemon=True)
        self._worker.start()

    @classmethod
    def load(cls, settings: RuntimeSettings, staged: StagedModel | None = None) -> TransformersEngine:
        return cls(Engine.load(settings, staged), settings.max_batch_size)

    # ----- prompts -------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return self.model.has_chat_template

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self.model.render_chat(messages)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.model.encode(text, add_special_tokens=add_special_tokens)

    # ----- requests ------------------------------------------------------------------------------

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, streaming: bool, model: str | None = None
    ) -> RequestHandle:
        handle = RequestHandle(asyncio.get_running_loop(), streaming=streaming, on_abort=self._poke)
        # One spelling per served model, so the worker's grouping compares like with like.
        request = BatchRequest(list(prompt_ids), params, handle, model=model or self.model.name)
        with self._wake:
            self._waiting.append(request)
            self._wake.notify()
        return handle

    def _poke(self) -> None:
        # A request aborted while it waits is dropped without a step: wake the worker for it.
        with self._wake:
            self._wake.notify()

    def stats(self) -> EngineStats:
        decoder = self._decoder.stats
        with self._wake:
            waiting, running = len(self._waiting), self._running
        return EngineStats(
            running=running,
            waiting=waiting,
            steps=decoder.steps,
            row_steps=decoder.row_steps,
            peak_batch_size=decoder.peak_batch_size,
        )

    def abort_all(self) -> None:
        with self._wake:
            requests = list(self._waiting) + [row.request for row in self._decoder.rows]
        for request in requests:
            if isinstance(request.sink, RequestHandle):
                request.sink.abort()

    async def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        await asyncio.to_thread(self._worker.join)
        self.model.close()

    # ----- the worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        decoder = self._decoder
        while True:
            with self._wake:
                while not self._closed and not decoder.rows and not self._waiting:
                    self._wake.wait()
                self._drop_cancelled_waiting()
                if self._closed and not decoder.rows and not self._waiting:
                    return
                joining = self._take_joining()
                self._running = len(decoder.rows) + len(joining)
            try:
                if joining:
                    decoder.add(joining)
                decoder.step()
            except Exception as exc:
                log.error("batch failed: %s", "".join(traceback.format_exception(exc)))
                # A request answered already ignores the failure (its handle resolves once).
                for request in decoder.fail_all() + joining:
                    request.sink.fail(exc)
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    release_cached_memory()
            with self._wake:
                self._running = len(decoder.rows)

    def _take_joining(self) -> list[BatchRequest]:
        """The waiting requests that join the batch now (under the lock)."""
        free = self._decoder.free_slots
        if free <= 0 or not self._waiting:
            return []
        if self._decoder.rows:
            # Only the head of the queue, and only while it is the running model's: a request of
            # another model at the head is next, once this batch drains.
            serving = self._decoder.serving
            joining: list[BatchRequest] = []
            while self._waiting and len(joining) < free and self._waiting[0].model == serving:
                joining.append(self._waiting.popleft())
            return joining
        # A new batch: the oldest request's model, with every waiting request of that model.
        model = self._waiting[0].model
        joining = [r for r in self._waiting if r.model == model][:free]
        taken = {id(r) for r in joining}
        self._waiting = deque(r for r in self._waiting if id(r) not in taken)
        return joining

    def _drop_cancelled_waiting(self) -> None:
        # The client left while its request waited: answer it without ever running it.
        for request in [r for r in self._waiting if r.sink.cancelled()]:
            self._waiting.remove(request)
            request.sink.finish(GenerationResult("", len(request.prompt_ids), 0, "abort"))
