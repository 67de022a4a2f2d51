"""Fixtures of the planner tests: an rclone S3 endpoint over sparse seed models, and moto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from local.sparse_models import (
    LLAMA_3_70B,
    SEED_MODELS,
    S3Server,
    WrittenModel,
    start_rclone_s3,
    stop_rclone_s3,
    write_dense_model,
    write_seed_model,
)

SEED_BUCKET = "asoba-llm-cache"


class SeedBucket:
    """`rclone serve s3` over sparse copies of the seed's models at their real sizes.

    Prefixes: `seed/` holds the six seed models plus `llama-3-70b` (too big even at 4 bits);
    `noawq/` holds qwen3-14b without its AWQ variant.
    """

    def __init__(self, server: S3Server, written: dict[str, WrittenModel]) -> None:
        self.server = server
        self.bucket = SEED_BUCKET
        self.written = written  # "<prefix>/<model>" -> what was written
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.server.client()
        return self._client

    def header_limits(self, prefix: str) -> dict[str, int]:
        """S3 key -> 8 + header length of every safetensors file under `prefix`."""
        limits: dict[str, int] = {}
        for where, model in self.written.items():
            if where.startswith(prefix):
                for name, size in model.header_bytes.items():
                    limits[f"{where}/{name}"] = size
        return limits


@pytest.fixture(scope="session")
def seed_bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedBucket]:
    root: Path = tmp_path_factory.mktemp("s3root")
    bucket = root / SEED_BUCKET
    written: dict[str, WrittenModel] = {}
    for name in SEED_MODELS:
        written[f"seed/{name}"] = write_seed_model(bucket / "seed", name)
    written["seed/llama-3-70b"] = write_dense_model(bucket / "seed", "llama-3-70b", LLAMA_3_70B, shards=30)
    written["noawq/qwen3-14b"] = write_seed_model(bucket / "noawq", "qwen3-14b")
    server = start_rclone_s3(root)
    try:
        yield SeedBucket(server, written)
    finally:
        stop_rclone_s3(server)


@pytest.fixture(scope="module")
def _moto_module() -> Iterator[Any]:
    # One mock per test module: starting moto costs ~0.6 s.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        with mock_aws():
            client = boto3.client("s3", region_name="us-east-1")
            client.create_bucket(Bucket="models")
            yield client


@pytest.fixture
def moto_s3(_moto_module: Any) -> Any:
    """A moto S3 client whose bucket `models` is empty at the start of each test (small objects only)."""
    client = _moto_module
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="models"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket="models", Key=item["Key"])
    return client
