"""Behaviour under load: /health stays fast during generation, a burst beyond the queue is
refused with 503 + Retry-After, a client that leaves frees the worker, SIGTERM drains."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.runtime.harness import MAIN_QUEUE_SIZE, BackgroundStream, RuntimeServer

# Several seconds of generation for the tiny model on one CPU thread.
LONG = {"prompt": "Tell me a long story", "max_tokens": 3000, "ignore_eos": True, "temperature": 0}


def test_health_stays_fast_while_a_long_generation_runs(
    main_server: RuntimeServer, background_stream: Callable[..., BackgroundStream]
) -> None:
    # Given a long generation running on the worker
    stream = background_stream(main_server.url, "/v1/completions", LONG)
    # When /health is polled 200 times meanwhile
    latencies: list[float] = []
    with httpx.Client(base_url=main_server.url, timeout=10) as http:
        http.get("/health")  # open the keep-alive connection outside the measurement
        for _ in range(200):
            started = time.perf_counter()
            response = http.get("/health")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
    still_generating = not stream.done.is_set()
    stream.close()
    # Then every probe overlapped the generation, and stayed fast (generate() on the event loop
    # would make each probe wait for the whole generation: seconds).
    assert still_generating, "the generation ended before the measurement did; make it longer"
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    print(f"/health under generation: p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms")
    # 50 ms is the goal; the bound is loose because other suites share these two cores.
    assert p50 < 0.050
    assert p99 < 0.100


def test_burst_beyond_the_queue_gets_503_and_service_stays_healthy(
    main_server: RuntimeServer, background_stream: Callable[..., BackgroundStream]
) -> None:
    # Given the worker busy with a long generation (QUEUE_SIZE=2 may wait behind it)
    stream = background_stream(main_server.url, "/v1/completions", LONG)
    burst = 8
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with httpx.Client(base_url=main_server.url, timeout=120) as http:
            response = http.post("/generate", json={"prompt": "hi", "max_tokens": 4, "ignore_eos": True})
        with lock:
            results.append(response)

    # When a burst of requests arrives at once
    threads = [threading.Thread(target=send) for _ in range(burst)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(results) < burst - MAIN_QUEUE_SIZE and time.monotonic() < deadline:
        time.sleep(0.02)
    # Then all but the queue's worth are refused at once, while /health and /status still answer
    refused = [r for r in results if r.status_code == 503]
    assert len(refused) == burst - MAIN_QUEUE_SIZE, [r.status_code for r in results]
    for response in refused:
        assert response.headers["Retry-After"] == "3"
        assert response.json()["error"]["type"] == "overloaded"
    assert httpx.get(f"{main_server.url}/health", timeout=5).status_code == 200
    assert httpx.get(f"{main_server.url}/status", timeout=5).json()["status"] == "healthy"
    # And once the long generation is abandoned, the queued requests are served
    stream.close()
    for thread in threads:
        thread.join(60)
    assert sorted(r.status_code for r in results) == [200] * MAIN_QUEUE_SIZE + [503] * (
        burst - MAIN_QUEUE_SIZE
    )
    after = httpx.post(f"{main_server.url}/generate", json={"prompt": "hi", "max_tokens": 3}, timeout=60)
    assert after.status_code == 200


def test_a_client_that_leaves_frees_the_worker(
    main_server: RuntimeServer, background_stream: Callable[..., BackgroundStream]
) -> None:
    # Given a stream that would take many seconds
    stream = background_stream(main_server.url, "/v1/completions", LONG)
    # When its client disconnects
    stream.close()
    # Then the generation stops at the next token: the next request does not wait for it
    started = time.monotonic()
    response = httpx.post(f"{main_server.url}/generate", json={"prompt": "hi", "max_tokens": 3}, timeout=60)
    assert response.status_code == 200
    assert time.monotonic() - started < 3.0


def test_sigterm_lets_the_running_generation_finish(
    tiny_llama: Path, runtime_server: Callable[[dict[str, str]], RuntimeServer]
) -> None:
    # Given a service in the middle of a streamed generation
    server = runtime_server({"MODEL_PATH": str(tiny_llama), "SHUTDOWN_TIMEOUT_S": "60"})
    server.wait_status("healthy")
    body: dict[str, Any] = {**LONG, "max_tokens": 400, "stream": True}
    chunks: list[str] = []
    with (
        httpx.Client(base_url=server.url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        chunks.append(next(line for line in lines if line.startswith("data: ")))
        # When systemd stops it
        assert server.process is not None
        server.process.terminate()
        chunks.extend(line for line in lines if line.startswith("data: "))
    # Then the client still gets the whole answer, and the process exits cleanly
    assert chunks[-1] == "data: [DONE]"
    final = json.loads(chunks[-2][6:])
    assert final["choices"][0]["finish_reason"] == "length"
    # uvicorn re-raises the SIGTERM it handled once shut down: systemd counts that as a clean stop.
    assert server.process.wait(30) in (0, -15)
    assert "Waiting for application shutdown" in server.log()
