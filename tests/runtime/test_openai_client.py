"""The official ``openai`` client, unchanged, against the runtime's /v1 routes."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.runtime.harness import MAIN_MAX_NEW_TOKENS, RuntimeServer

MODEL = "tiny-llama"


@pytest.fixture
def oai(main_server: RuntimeServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{main_server.url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


def test_client_lists_the_model(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == [MODEL]


def test_client_completion_and_its_stream_agree(oai: openai.OpenAI) -> None:
    # Given a greedy completion through the client
    whole = oai.completions.create(model=MODEL, prompt="The quick brown", max_tokens=20, temperature=0)
    assert whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    # When the same request streams
    stream = oai.completions.create(
        model=MODEL, prompt="The quick brown", max_tokens=20, temperature=0, stream=True
    )
    chunks = list(stream)
    # Then the client reassembles the same text and sees the same finish reason
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_client_chat_and_its_stream_agree(oai: openai.OpenAI) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    whole = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=25, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and whole.usage.prompt_tokens > 10

    stream = oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=25,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_client_accepts_max_completion_tokens_and_content_parts(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
        max_completion_tokens=7,
        temperature=0.5,
        extra_body={"ignore_eos": True},
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    assert reply.choices[0].finish_reason == "length"


def test_client_gets_typed_errors(oai: openai.OpenAI) -> None:
    # A request over the limit is the client's UnprocessableEntityError, naming the field.
    with pytest.raises(openai.UnprocessableEntityError) as excinfo:
        oai.completions.create(model=MODEL, prompt="hi", max_tokens=MAIN_MAX_NEW_TOKENS + 1)
    assert "max_tokens" in str(excinfo.value)
    # An unknown model is NotFoundError.
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
