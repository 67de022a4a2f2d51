"""The only I/O of the planner: a small read-only S3 reader.

Everything above this module (safetensors headers, manifest, catalog) talks to the
`S3Reader` protocol, never to boto3, so tests and benchmarks can pass a client with an
`endpoint_url` (moto, `rclone serve s3`) and can wrap the reader to count bytes.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from asoba_deploy.core.errors import InvalidInput

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class ObjectInfo(BaseModel):
    """One object of a listing."""

    model_config = ConfigDict(frozen=True)

    key: str
    size: int = Field(ge=0)


class S3Reader(Protocol):
    """Read-only access to one bucket."""

    @property
    def bucket(self) -> str: ...

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix` (all pages), in key order."""
        ...

    def prefix_exists(self, prefix: str) -> bool:
        """Whether at least one object lies under `prefix`."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Exactly `length` bytes of `key` from offset `start` (one ranged GET)."""
        ...

    def read_object(self, key: str, max_bytes: int) -> bytes | None:
        """The whole object, None when it does not exist; InvalidInput above `max_bytes`."""
        ...


class BotoS3Reader:
    """`S3Reader` over a boto3 S3 client (injected: tests pass one with an endpoint_url)."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    @property
    def bucket(self) -> str:
        return self._bucket

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        found: list[ObjectInfo] = []
        for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found.append(ObjectInfo(key=item["Key"], size=int(item["Size"])))
        return sorted(found, key=lambda info: info.key)

    def prefix_exists(self, prefix: str) -> bool:
        response = self._client.list_objects_v2(Bucket=self._bucket, Prefix=prefix, MaxKeys=1)
        return bool(response.get("Contents"))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        response = self._client.get_object(
            Bucket=self._bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
        )
        data: bytes = response["Body"].read()
        if len(data) != length:
            raise InvalidInput(
                f"s3://{self._bucket}/{key}: asked for {length} bytes at offset {start}, got {len(data)}"
            )
        return data

    def read_object(self, key: str, max_bytes: int) -> bytes | None:
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return None
            raise
        body = response["Body"]
        size = int(response.get("ContentLength", 0))
        if size > max_bytes:
            body.close()
            raise InvalidInput(f"s3://{self._bucket}/{key} is {size} bytes, above the {max_bytes} byte limit")
        data: bytes = body.read()
        return data


class CountingReader:
    """Wraps a reader and counts requests and body bytes read (thread-safe)."""

    def __init__(self, inner: S3Reader) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.gets = 0
        self.lists = 0
        self.ranges: list[tuple[str, int, int]] = []

    @property
    def bucket(self) -> str:
        return self._inner.bucket

    def _count(self, data: bytes | None, key: str, start: int) -> None:
        with self._lock:
            self.gets += 1
            if data is not None:
                self.bytes_read += len(data)
                self.ranges.append((key, start, len(data)))

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        with self._lock:
            self.lists += 1
        return self._inner.list_objects(prefix)

    def prefix_exists(self, prefix: str) -> bool:
        with self._lock:
            self.lists += 1
        return self._inner.prefix_exists(prefix)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        data = self._inner.read_range(key, start, length)
        self._count(data, key, start)
        return data

    def read_object(self, key: str, max_bytes: int) -> bytes | None:
        data = self._inner.read_object(key, max_bytes)
        self._count(data, key, 0)
        return data
