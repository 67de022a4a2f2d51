"""DynamoDB writes are atomic per item on AWS: a conditional put, an `ADD` update. moto's backend
reads, changes and stores an item without a lock, so two threads of the local cloud (two Map
iterations counting a rollout's failures, two executions taking one instance's lock) could both
read the old item and one write would be lost. Here every item write of the backend runs under
one lock, as DynamoDB's per-item serialization would have it. A moto internal: moto is pinned
exactly."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
_LOCK = threading.RLock()


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def write(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    write._serialized = True  # type: ignore[attr-defined]
    return write


def install() -> None:
    from moto.dynamodb.models import DynamoDBBackend

    for name in WRITES:
        method = getattr(DynamoDBBackend, name)
        if not getattr(method, "_serialized", False):
            setattr(DynamoDBBackend, name, _serialized(method))
