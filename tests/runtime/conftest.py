"""Fixtures for the instance runtime: tiny real models, and the service as a real uvicorn process.

Every server binds 127.0.0.1 on a port picked by the OS (other suites run beside this one), runs
with one torch thread (two cores on these machines), and is stopped with SIGTERM as systemd would.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub, ever: before transformers is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from local.models import build_tiny_model, convert_smollm2
from tests.runtime.harness import (
    MAIN_CONTEXT,
    MAIN_MAX_NEW_TOKENS,
    MAIN_QUEUE_SIZE,
    MODEL_CACHE,
    BackgroundStream,
    RuntimeServer,
)


@pytest.fixture(scope="session", autouse=True)
def _few_torch_threads() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3", arch="qwen3")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as bf16 safetensors, converted once and cached across runs."""
    return convert_smollm2(MODEL_CACHE / "smollm2-135m-instruct")


@pytest.fixture
def runtime_server(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``runtime_server(env)`` starts a server for this test; all are stopped at its end."""
    servers: list[RuntimeServer] = []

    def start(env: dict[str, str]) -> RuntimeServer:
        server = RuntimeServer(env=env, log_path=tmp_path / f"runtime-{len(servers)}.log")
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def main_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeServer]:
    """The tiny Llama served with small, known limits; shared by the API tests."""
    server = RuntimeServer(
        env={
            "MODEL_PATH": str(tiny_llama),
            "MODEL_NAME": "tiny-llama",
            "CONTEXT_LENGTH": str(MAIN_CONTEXT),
            "MAX_NEW_TOKENS": str(MAIN_MAX_NEW_TOKENS),
            "DEFAULT_MAX_TOKENS": "16",
            "QUEUE_SIZE": str(MAIN_QUEUE_SIZE),
            # One at a time, so QUEUE_SIZE alone decides what waits (test_load counts it).
            "MAX_BATCH_SIZE": "1",
            "RETRY_AFTER_S": "3",
        },
        log_path=tmp_path_factory.mktemp("logs") / "main-runtime.log",
    )
    server.start()
    try:
        server.wait_status("healthy")
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(main_server: RuntimeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=main_server.url, timeout=60) as http:
        yield http


@pytest.fixture
def background_stream() -> Iterator[Any]:
    streams: list[BackgroundStream] = []

    def start(url: str, path: str, body: dict[str, Any]) -> BackgroundStream:
        stream = BackgroundStream(url, path, body)
        streams.append(stream)
        assert stream.first_chunk.wait(60), "the stream never started"
        return stream

    yield start
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.close()
