"""Continuous batching: concurrent requests share decode steps, each keeps its own parameters and
gets what it would get alone; a client that leaves frees its slot; /metrics counts it all;
/health stays fast while a full batch generates. Against the real tiny Llama."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from instance_runtime.engine import Engine
from instance_runtime.generation import GenerationResult, SamplingParams
from instance_runtime.serving import EngineUnavailable
from instance_runtime.settings import RuntimeSettings
from instance_runtime.transformers_engine import TransformersEngine
from instance_runtime.vllm_engine import VllmEngine
from tests.runtime.harness import BackgroundStream, RuntimeServer

LONG = {"prompt": "Tell me a long story", "max_tokens": 3000, "ignore_eos": True, "temperature": 0}
PROMPTS = ["The capital of France is", "Hi", "Numbers: 1 2 3 4 5 6 7", "Tell me about the lazy fox"]


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> Iterator[TransformersEngine]:
    loaded = TransformersEngine.load(RuntimeSettings(model_path=tiny_llama, max_batch_size=4))
    yield loaded
    asyncio.run(loaded.close())


@pytest.fixture(scope="module")
def batch_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeServer]:
    server = RuntimeServer(
        env={
            "MODEL_PATH": str(tiny_llama),
            "MAX_BATCH_SIZE": "8",
            "QUEUE_SIZE": "4",
            "MAX_NEW_TOKENS": "4000",
        },
        log_path=tmp_path_factory.mktemp("logs") / "batch-runtime.log",
    )
    server.start()
    try:
        server.wait_status("healthy")
        yield server
    finally:
        server.stop()


def run_together(engine: TransformersEngine, requests: list[tuple[list[int], SamplingParams]]) -> list[Any]:
    async def scenario() -> list[GenerationResult]:
        handles = [engine.submit(ids, params, streaming=False) for ids, params in requests]
        return [await h.result() for h in handles]

    return asyncio.run(scenario())


def wait_idle(engine: TransformersEngine, timeout: float = 10) -> bool:
    """The worker counts its batch after the step that answered the last request: poll."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()
        if stats.running == 0 and stats.waiting == 0:
            return True
        time.sleep(0.01)
    return False


def metrics(url: str) -> dict[str, float]:
    """Every sample of /metrics by name and labels, e.g. 'x_total{finish_reason="length"}'."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_requests_that_arrive_together_are_batched_and_each_gets_its_own_answer(
    engine: TransformersEngine,
) -> None:
    model: Engine = engine.model
    greedy = [SamplingParams(max_tokens=12 + 7 * i, temperature=0, ignore_eos=True) for i in range(4)]
    ids = [model.encode(p) for p in PROMPTS]
    # Given each request's answer alone, and a stop string from the middle of the last one's
    alone = [model.generate(i, p) for i, p in zip(ids, greedy, strict=True)]
    text = alone[3].text
    stop = next(text[i : i + 3] for i in range(5, len(text) - 3) if text[i : i + 3].strip())
    stopped = SamplingParams(max_tokens=greedy[3].max_tokens, temperature=0, ignore_eos=True, stop=(stop,))
    alone[3] = model.generate(ids[3], stopped)
    assert alone[3].finish_reason == "stop"
    # When the four arrive together, each with its own max_tokens (and one with a stop string)
    together = run_together(engine, list(zip(ids, [*greedy[:3], stopped], strict=True)))
    # Then they shared decode steps, and each got exactly its unbatched greedy answer
    stats = engine.stats()
    assert stats.peak_batch_size > 1
    for got, want in zip(together, alone, strict=True):
        assert got == want
    assert [r.completion_tokens for r in together[:3]] == [12, 19, 26]
    assert wait_idle(engine)


def test_a_request_joins_a_running_batch_at_a_step_boundary(engine: TransformersEngine) -> None:
    model = engine.model
    long_ids, short_ids = model.encode(PROMPTS[0]), model.encode(PROMPTS[2])
    long_params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    short_params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    short_alone = model.generate(short_ids, short_params)

    async def scenario() -> tuple[GenerationResult, bool]:
        running = engine.submit(long_ids, long_params, streaming=False)
        while engine.stats().running == 0:  # the long one has started decoding
            await asyncio.sleep(0.005)
        joined = await engine.submit(short_ids, short_params, streaming=False).result()
        # The short one finished while the long one was still generating: it did not wait
        overlapped = not running.done.done()
        await running.result()
        return joined, overlapped

    joined, overlapped = asyncio.run(scenario())
    assert overlapped
    assert joined == short_alone


def test_sampling_with_a_seed_is_reproducible_inside_a_batch(engine: TransformersEngine) -> None:
    ids = engine.model.encode("Once")
    sampled = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    other = SamplingParams(max_tokens=20, temperature=0.8, seed=8, ignore_eos=True)
    first = run_together(engine, [(ids, sampled), (ids, other)])
    again = run_together(engine, [(ids, sampled), (ids, other)])
    assert first[0].text == again[0].text
    assert first[0].text != first[1].text


def test_a_cancelled_request_leaves_the_batch_and_frees_its_slot(engine: TransformersEngine) -> None:
    ids = engine.model.encode(PROMPTS[1])

    async def scenario() -> GenerationResult:
        handles = [
            engine.submit(
                ids, SamplingParams(max_tokens=3000, temperature=0, ignore_eos=True), streaming=True
            )
            for _ in range(4)
        ]
        while engine.stats().running < 4:
            await asyncio.sleep(0.005)
        # When one client leaves, its row is dropped at the next step
        handles[0].abort()
        aborted = await handles[0].result()
        while engine.stats().running != 3:  # the other three go on
            await asyncio.sleep(0.005)
        for handle in handles[1:]:
            handle.abort()
        for handle in handles[1:]:
            await handle.result()
        return aborted

    aborted = asyncio.run(scenario())
    assert aborted.finish_reason == "abort"
    assert aborted.completion_tokens < 3000
    assert wait_idle(engine)


def test_concurrent_http_requests_are_batched_with_their_own_limits(batch_server: RuntimeServer) -> None:
    bodies = [
        {"prompt": prompt, "max_tokens": 60 + 20 * i, "temperature": 0, "ignore_eos": True}
        for i, prompt in enumerate(PROMPTS)
    ]
    with httpx.Client(base_url=batch_server.url, timeout=120) as http:
        alone = [http.post("/v1/completions", json=body).json()["choices"][0]["text"] for body in bodies]
    peak_before = metrics(batch_server.url)["asoba_inference_batch_size_peak"]
    assert peak_before == 1  # sequential requests never shared a step
    results: dict[int, dict[str, Any]] = {}

    def send(i: int) -> None:
        results[i] = httpx.post(f"{batch_server.url}/v1/completions", json=bodies[i], timeout=120).json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [results[i]["choices"][0]["text"] for i in range(4)] == alone
    assert [results[i]["usage"]["completion_tokens"] for i in range(4)] == [60, 80, 100, 120]
    assert metrics(batch_server.url)["asoba_inference_batch_size_peak"] > 1


def test_metrics_expose_requests_tokens_and_latencies(batch_server: RuntimeServer) -> None:
    before = metrics(batch_server.url)
    with httpx.Client(base_url=batch_server.url, timeout=60) as http:
        usage = http.post("/generate", json={"prompt": "hi", "max_tokens": 7, "ignore_eos": True}).json()[
            "usage"
        ]
        streamed = http.post("/v1/completions", json={"prompt": "hello", "max_tokens": 5, "stream": True})
        assert streamed.status_code == 200
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = metrics(batch_server.url)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew('asoba_inference_requests_total{finish_reason="length"}') == 2
    assert grew("asoba_inference_generation_tokens_total") == 7 + 5
    assert grew("asoba_inference_prompt_tokens_total") >= usage["prompt_tokens"] + 1
    assert grew("asoba_inference_time_to_first_token_seconds_count") == 2
    assert grew("asoba_inference_request_latency_seconds_count") == 2
    assert after["asoba_inference_requests_running"] == 0
    assert after["asoba_inference_requests_waiting"] == 0
    assert after["asoba_inference_decode_steps_total"] > 0
    # No GPU here: no GPU gauge rather than an invented one.
    if batch_server.startup and batch_server.startup.status_body.get("gpu_memory_total") is None:
        assert not any(name.startswith("asoba_inference_gpu_memory") for name in after)


def test_health_stays_fast_while_a_full_batch_generates(
    batch_server: RuntimeServer, background_stream: Callable[..., BackgroundStream]
) -> None:
    # Given eight long generations sharing the batch
    streams = [background_stream(batch_server.url, "/v1/completions", LONG) for _ in range(8)]
    # When /health is polled meanwhile
    latencies: list[float] = []
    with httpx.Client(base_url=batch_server.url, timeout=10) as http:
        http.get("/health")
        for _ in range(200):
            started = time.perf_counter()
            assert http.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
    running = metrics(batch_server.url)["asoba_inference_requests_running"]
    still_generating = not any(s.done.is_set() for s in streams)
    for stream in streams:
        stream.close()
    assert still_generating, "the generations ended before the measurement did; make them longer"
    assert running == 8
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    print(f"/health under a batch of 8: p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms")
    # Loose: other suites share these two cores.
    assert p99 < 0.200


def test_a_client_that_leaves_frees_its_batch_slot(
    tiny_llama: Path,
    runtime_server: Callable[[dict[str, str]], RuntimeServer],
    background_stream: Callable[..., BackgroundStream],
) -> None:
    # Given a batch of two, both slots taken by long streams, and no queue
    server = runtime_server(
        {"MODEL_PATH": str(tiny_llama), "MAX_BATCH_SIZE": "2", "QUEUE_SIZE": "0", "MAX_NEW_TOKENS": "4000"}
    )
    server.wait_status("healthy")
    first = background_stream(server.url, "/v1/completions", LONG)
    second = background_stream(server.url, "/v1/completions", LONG)
    assert first.status_code == second.status_code == 200
    short = {"prompt": "hi", "max_tokens": 3}
    assert httpx.post(f"{server.url}/generate", json=short, timeout=30).status_code == 503
    # When one client disconnects
    first.close()
    # Then its slot is free within a step or two, while the other keeps generating
    deadline = time.monotonic() + 10
    status = 503
    while status == 503 and time.monotonic() < deadline:
        status = httpx.post(f"{server.url}/generate", json=short, timeout=30).status_code
        time.sleep(0.02)
    assert status == 200
    assert metrics(server.url)['asoba_inference_requests_total{finish_reason="abort"}'] >= 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_fails_clearly(
    tiny_llama: Path, runtime_server: Callable[[dict[str, str]], RuntimeServer]
) -> None:
    with pytest.raises(EngineUnavailable, match="vLLM is not installed"):
        VllmEngine.load(RuntimeSettings(model_path=tiny_llama, engine="vllm"))
    # And the service says so in /status, while /health stays up
    server = runtime_server({"MODEL_PATH": str(tiny_llama), "ENGINE": "vllm"})
    body = server.wait_status("error", timeout=30)
    assert "EngineUnavailable" in body["error"] and "vLLM is not installed" in body["error"]
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
