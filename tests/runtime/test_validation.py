"""Requests outside the limits are 422 with a message naming the field, and harm nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.runtime.harness import MAIN_CONTEXT, MAIN_MAX_NEW_TOKENS

HI = [{"role": "user", "content": "hi"}]
# Longer than the context in any tokenization: each word is at least one token.
TOO_LONG = "word " * (MAIN_CONTEXT + 10)
# Fits the context alone, but not with the largest allowed completion.
LONGISH = "word " * 200

# (path, body, the field the error must name)
BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("/generate", {"prompt": ""}, "prompt"),
    ("/generate", {"max_tokens": 5}, "prompt"),
    ("/generate", {"prompt": 123}, "prompt"),
    ("/generate", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/generate", {"prompt": "hi", "max_tokens": -3}, "max_tokens"),
    ("/generate", {"prompt": "hi", "max_tokens": MAIN_MAX_NEW_TOKENS + 1}, "max_tokens"),
    ("/generate", {"prompt": "hi", "max_tokens": "lots"}, "max_tokens"),
    ("/generate", {"prompt": "hi", "max_tokens": 2.5}, "max_tokens"),
    ("/generate", {"prompt": "hi", "temperature": -0.1}, "temperature"),
    ("/generate", {"prompt": "hi", "temperature": 2.01}, "temperature"),
    ("/generate", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("/generate", {"prompt": "hi", "top_p": 1.5}, "top_p"),
    ("/generate", {"prompt": TOO_LONG, "max_tokens": 1}, "prompt"),
    ("/generate", {"prompt": LONGISH, "max_tokens": MAIN_MAX_NEW_TOKENS}, "max_tokens"),
    ("/generate", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/generate", {"prompt": "hi", "stop": ""}, "stop"),
    ("/generate", {"prompt": "hi", "seed": -1}, "seed"),
    ("/generate", "this is not json", "body"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, "n"),
    ("/v1/completions", {"prompt": ["one", "two"]}, "prompt"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": 3}, "temperature"),
    (
        "/v1/completions",
        {"prompt": "hi", "stream": True, "max_tokens": MAIN_MAX_NEW_TOKENS + 1},
        "max_tokens",
    ),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages.0.content",
    ),
    ("/v1/chat/completions", {"messages": HI, "max_completion_tokens": 0}, "max_completion_tokens"),
    (
        "/v1/chat/completions",
        {"messages": HI, "max_completion_tokens": MAIN_MAX_NEW_TOKENS + 1},
        "max_completion_tokens",
    ),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": -1}, "max_tokens"),
    ("/v1/chat/completions", {"messages": HI, "temperature": -1}, "temperature"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": TOO_LONG}]}, "messages"),
    ("/v1/chat/completions", {"messages": HI, "stream": True, "top_p": 2}, "top_p"),
]


def test_the_list_is_long_enough() -> None:
    assert len(BAD_REQUESTS) >= 15


@pytest.mark.parametrize(
    ("path", "body", "field"),
    BAD_REQUESTS,
    ids=[f"{i:02d}-{path.rsplit('/', 1)[-1]}-{field}" for i, (path, _, field) in enumerate(BAD_REQUESTS)],
)
def test_bad_request_is_422_naming_the_field(client: httpx.Client, path: str, body: Any, field: str) -> None:
    # Given a request outside the limits / When it is sent
    if isinstance(body, str):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    # Then it is refused before any generation, with an OpenAI-shaped error naming the field
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(field), error
    assert field.split(".")[0] in error["message"]


def test_service_is_unharmed_by_bad_requests(client: httpx.Client) -> None:
    for path, body, _ in BAD_REQUESTS[:5]:
        client.post(path, json=body)
    assert client.get("/status").json()["status"] == "healthy"
    assert client.post("/generate", json={"prompt": "hi", "max_tokens": 3}).status_code == 200
