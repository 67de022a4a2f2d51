"""Admission: a bounded number of requests in the engine, so overload is a quick 503.

The bound is the running batch plus QUEUE_SIZE waiting behind it. A slot is released when the
engine has really stopped working on the request (its handle's ``done``), not when the client
goes away: a generation whose client left still holds the GPU until its abort takes effect.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from instance_runtime.errors import QueueFull, ShuttingDown


class Admission:
    def __init__(self, running: int, queue_size: int, retry_after_s: int) -> None:
        self.capacity = running + queue_size
        self._queue_size = queue_size
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._inflight = 0
        self._closed = False

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def acquire(self) -> None:
        """Take a slot, or refuse at once."""
        with self._lock:
            if self._closed:
                raise ShuttingDown("the service is shutting down", retry_after_s=self._retry_after_s)
            if self._inflight >= self.capacity:
                raise QueueFull(
                    f"the generation queue is full ({self._queue_size} waiting); retry later",
                    retry_after_s=self._retry_after_s,
                )
            self._inflight += 1

    def release_when_done(self, done: asyncio.Future[Any]) -> None:
        done.add_done_callback(lambda _: self.release_now())

    def release_now(self) -> None:
        with self._lock:
            self._inflight -= 1

    async def close(self, drain_timeout_s: float) -> bool:
        """Refuse new requests and wait for those admitted; False if some outlived the drain."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + drain_timeout_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.inflight == 0
