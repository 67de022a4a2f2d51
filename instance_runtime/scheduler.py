"""One generation at a time, off the event loop, behind a bounded queue.

generate() holds the GIL between kernels and blocks for seconds; run inside ``async def`` it
stopped /health for 11.8 s (DESIGN 6). In a one-thread executor /health stays at milliseconds.
One thread because one model on one GPU gains nothing from concurrent generate() calls, and
the bound turns overload into a quick 503 instead of a growing wait.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from instance_runtime.errors import QueueFull, ShuttingDown

log = logging.getLogger(__name__)

T = TypeVar("T")


class GenerationScheduler:
    def __init__(self, queue_size: int, retry_after_s: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._capacity = queue_size + 1  # the running request plus those waiting
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._inflight = 0
        self._closed = False
        self._cancels: set[threading.Event] = set()

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def submit(self, job: Callable[[threading.Event], T]) -> tuple[asyncio.Future[T], threading.Event]:
        """Queue ``job(cancel)``, or refuse at once when the queue is full.

        The slot is released when the job really ends in the worker (or is dropped before it
        started), not when the awaiting request goes away: a generation whose client left still
        occupies the GPU until its cancel event stops it.
        """
        cancel = threading.Event()
        with self._lock:
            if self._closed:
                raise ShuttingDown("the service is shutting down", retry_after_s=self._retry_after_s)
            if self._inflight >= self._capacity:
                raise QueueFull(
                    f"the generation queue is full ({self._capacity - 1} waiting); retry later",
                    retry_after_s=self._retry_after_s,
                )
            self._inflight += 1
            self._cancels.add(cancel)

        def release(_: Future[T]) -> None:
            with self._lock:
                self._inflight -= 1
                self._cancels.discard(cancel)

        future = self._executor.submit(job, cancel)
        future.add_done_callback(release)
        return asyncio.wrap_future(future), cancel

    async def close(self, drain_timeout_s: float) -> None:
        """Refuse new work, let queued and running generations finish, then stop the worker."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + drain_timeout_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with self._lock:
            left = list(self._cancels)
        if left:
            log.warning("shutdown: cancelling %d unfinished generation(s)", len(left))
            for cancel in left:
                cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        # The running generate() sees its cancel event at the next token.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
