"""A generation that fails (CUDA out of memory, a kernel error) answers 500; the service stays up.

The failure is injected into the real engine of a real uvicorn server run in this process:
nothing in a healthy tiny model fails on request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import uvicorn

from instance_runtime.app import create_app
from instance_runtime.batching import BatchDecoder, BatchRequest
from instance_runtime.settings import RuntimeSettings
from tests.runtime.harness import free_port

BOOM = "please fail"


@pytest.fixture
def failing_server(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    original = BatchDecoder.add

    # The prefill of the service's batch loop is where a long prompt runs out of memory.
    def add(self: BatchDecoder, requests: Sequence[BatchRequest]) -> None:
        if any(self.engine.encode(BOOM) == list(r.prompt_ids) for r in requests):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        original(self, requests)

    monkeypatch.setattr(BatchDecoder, "add", add)
    port = free_port()
    settings = RuntimeSettings(model_path=tiny_llama, host="127.0.0.1", port=port, torch_threads=1)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/status", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        raise AssertionError("in-process runtime never became healthy")
    yield url
    server.should_exit = True
    thread.join(30)


def test_a_failing_generation_is_500_and_the_service_stays_up(failing_server: str) -> None:
    with httpx.Client(base_url=failing_server, timeout=60) as http:
        # When a generation fails inside the worker
        failed = http.post("/generate", json={"prompt": BOOM, "max_tokens": 5})
        # Then the client gets a 500 that says what happened
        assert failed.status_code == 500
        error = failed.json()["error"]
        assert error["type"] == "internal_error"
        assert "out of memory" in error["message"]
        # And the service is still healthy and still generates
        assert http.get("/health").status_code == 200
        assert http.get("/status").json()["status"] == "healthy"
        ok = http.post("/generate", json={"prompt": "fine", "max_tokens": 5, "ignore_eos": True})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 5


def test_a_failing_stream_ends_with_an_error_event(failing_server: str) -> None:
    with httpx.Client(base_url=failing_server, timeout=60) as http:
        response = http.post("/v1/completions", json={"prompt": BOOM, "max_tokens": 5, "stream": True})
        assert response.status_code == 200  # the headers went out before the failure
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert '"internal_error"' in events[-2]
        assert http.post("/generate", json={"prompt": "fine", "max_tokens": 2}).status_code == 200
