"""The seed's API (/health, /status, /generate) and the OpenAI routes, against a real uvicorn
process serving the tiny Llama."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.runtime.harness import MAIN_CONTEXT, RuntimeServer

SEED_STATUS_FIELDS = {
    "status",
    "model",
    "gpu_memory_used",
    "gpu_memory_total",
    "ram_usage_gb",
    "port",
    "timestamp",
    "service",
}
SEED_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


@pytest.fixture(scope="module")
def direct(tiny_llama: Path) -> tuple[Any, Any]:
    """The same checkpoint driven by transformers directly: the reference for greedy outputs."""
    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def direct_greedy(direct: tuple[Any, Any], prompt: str, max_new_tokens: int) -> tuple[str, int]:
    model, tokenizer = direct
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, top_k=None)
    new = out[0, ids["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), int(ids["input_ids"].shape[1])


def sse_payloads(response: httpx.Response) -> list[Any]:
    """The JSON payloads of a server-sent event stream, checking it ends with [DONE]."""
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines and lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_health_answers_ok_with_a_seed_timestamp(client: httpx.Client) -> None:
    # Given a running service / When /health is asked
    response = client.get("/health")
    # Then it is the seed's body
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "timestamp"}
    assert body["status"] == "ok"
    assert SEED_TIMESTAMP.match(body["timestamp"])


def test_status_is_healthy_with_exactly_the_seed_fields(
    client: httpx.Client, main_server: RuntimeServer
) -> None:
    # Given the model has loaded / When /status is asked
    response = client.get("/status")
    # Then it is 200 with the seed's fields and values from this machine, and how it loaded
    assert response.status_code == 200
    body = response.json()
    assert set(body) == SEED_STATUS_FIELDS | {"load", "last_request_at", "adapters"}
    assert body["adapters"] == []
    load = body["load"]
    assert (load["from"], load["reason"]) == ("disk", "LOAD_FROM=disk")
    assert load["seconds"] > 0 and load["stage_seconds"] is None
    assert body["status"] == "healthy"
    assert body["model"] == "tiny-llama"
    assert body["service"] == "asoba-inference"
    assert body["port"] == main_server.port
    assert SEED_TIMESTAMP.match(body["timestamp"])
    ts = datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60
    # No GPU here: NVML is absent, so the GPU figures are null rather than invented.
    if not torch.cuda.is_available():
        assert body["gpu_memory_used"] is None and body["gpu_memory_total"] is None
    # The process holds torch and a model: well above zero, well below the machine.
    assert 0.05 < body["ram_usage_gb"] < 16


def test_status_says_when_the_last_generation_finished(client: httpx.Client) -> None:
    # Given a generation that finished after `before` (to the second, as the field is written)
    before = datetime.now(UTC).replace(microsecond=0)
    response = client.post("/generate", json={"prompt": "Hello", "max_tokens": 2, "temperature": 0})
    assert response.status_code == 200
    # When /status is asked / Then last_request_at is that request's end: not before it, not later
    # than now (what the planner orders resident models by, least recently used first)
    stamp = client.get("/status").json()["last_request_at"]
    finished = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= finished <= datetime.now(UTC)


def test_generate_returns_the_seed_format_with_tokenizer_counts(
    client: httpx.Client, direct: tuple[Any, Any]
) -> None:
    # Given a prompt / When /generate runs greedily
    prompt = "The capital of France is"
    response = client.post("/generate", json={"prompt": prompt, "max_tokens": 24, "temperature": 0})
    # Then the body is the seed's, the text is what transformers generates, counts come from the tokenizer
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"choices", "usage", "model", "created", "id"}
    assert body["model"] == "tiny-llama"
    assert re.match(r"^gen-\d{8}-\d{6}-[0-9a-f]{8}$", body["id"])
    assert abs(body["created"] - datetime.now(UTC).timestamp()) < 60
    [choice] = body["choices"]
    assert set(choice) == {"text", "finish_reason"}
    expected_text, prompt_tokens = direct_greedy(direct, prompt, 24)
    assert choice["text"] == expected_text
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert 1 <= usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if usage["completion_tokens"] == 24:
        assert choice["finish_reason"] == "length"


def test_generate_without_max_tokens_uses_the_configured_default(client: httpx.Client) -> None:
    # Given DEFAULT_MAX_TOKENS=16 / When a request omits max_tokens and cannot stop early
    response = client.post("/generate", json={"prompt": "Hello", "ignore_eos": True})
    # Then exactly 16 tokens are generated
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 16
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_ignore_eos_generates_exactly_max_tokens(client: httpx.Client) -> None:
    response = client.post("/generate", json={"prompt": "Hi", "max_tokens": 300, "ignore_eos": True})
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 300


def test_stop_string_cuts_the_text_and_reports_stop(client: httpx.Client) -> None:
    # Given the greedy continuation of a prompt
    body = {"prompt": "Health checks must", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    full = client.post("/generate", json=body).json()["choices"][0]["text"]
    stop = next(full[i : i + 3] for i in range(5, len(full) - 3) if full[i : i + 3].strip())
    cut = full.index(stop)
    # When the same request names a stop string from the middle of that text
    stopped = client.post("/generate", json={**body, "stop": [stop]}).json()
    # Then the text ends right before it, and the finish reason says so
    assert stopped["choices"][0]["text"] == full[:cut]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < 40
    # And a streaming client gets exactly the same text
    streamed = client.post("/v1/completions", json={**body, "stop": stop, "stream": True})
    chunks = sse_payloads(streamed)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[:cut]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_seed_makes_sampling_reproducible(client: httpx.Client) -> None:
    body = {"prompt": "Once", "max_tokens": 30, "temperature": 1.0, "ignore_eos": True}
    first = client.post("/generate", json={**body, "seed": 7}).json()["choices"][0]["text"]
    again = client.post("/generate", json={**body, "seed": 7}).json()["choices"][0]["text"]
    other = client.post("/generate", json={**body, "seed": 8}).json()["choices"][0]["text"]
    assert first == again
    assert first != other


def test_models_lists_the_served_model(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == "tiny-llama"
    assert card["object"] == "model"
    assert card["max_model_len"] == MAIN_CONTEXT


def test_completions_match_generate_and_echo_the_prompt(client: httpx.Client) -> None:
    # Given the greedy answer of /generate
    prompt = "Numbers: 1 2 3"
    reference = client.post("/generate", json={"prompt": prompt, "max_tokens": 12, "temperature": 0}).json()
    # When /v1/completions asks the same, with echo
    response = client.post(
        "/v1/completions",
        json={"model": "tiny-llama", "prompt": prompt, "max_tokens": 12, "temperature": 0, "echo": True},
    )
    # Then the OpenAI body carries the prompt plus the same continuation
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == prompt + reference["choices"][0]["text"]
    assert body["usage"] == reference["usage"]


def test_chat_completion_uses_the_tokenizer_chat_template(
    client: httpx.Client, direct: tuple[Any, Any]
) -> None:
    # Given a conversation, rendered by the tokenizer's chat template
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    _, tokenizer = direct
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    reference = client.post(
        "/v1/completions", json={"prompt": rendered, "max_tokens": 10, "temperature": 0}
    ).json()
    # When /v1/chat/completions receives it
    response = client.post(
        "/v1/chat/completions", json={"messages": messages, "max_tokens": 10, "temperature": 0}
    )
    # Then the reply is the completion of the rendered template
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": reference["choices"][0]["text"]}
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode(rendered, add_special_tokens=False))


def test_chat_stream_sends_role_deltas_finish_and_usage(client: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 15, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body).json()
    response = client.post(
        "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_payloads(response)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_another_model_name_is_not_found(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi", "max_tokens": 2})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "model"
