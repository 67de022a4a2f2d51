"""boto3 clients, created lazily and shared within one process."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


@lru_cache(maxsize=32)
def _client(service: str, region: str | None, endpoint: str | None) -> Any:
    return boto3.client(service, region_name=region, endpoint_url=endpoint, config=_CONFIG)


def client(service: str) -> Any:
    # AWS_ENDPOINT_URL is honoured by boto3 itself; it is part of the key so a process
    # that changes it (the local emulator) gets a fresh client.
    return _client(
        service,
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        os.environ.get("AWS_ENDPOINT_URL"),
    )
