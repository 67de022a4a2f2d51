"""Model loading as the service does it: in the background, from the environment, with
quantization and LoRA adapters, and with errors an operator can read in /status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from instance_runtime.engine import Engine
from instance_runtime.generation import SamplingParams
from instance_runtime.settings import RuntimeSettings
from local.models import build_tiny_lora
from tests.runtime.harness import RuntimeServer

StartServer = Callable[[dict[str, str]], RuntimeServer]


def greedy(model: Any, tokenizer: Any, prompt: str, n: int) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, top_k=None)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def test_health_answers_while_the_model_is_still_loading(main_server: RuntimeServer) -> None:
    # Given the service was just started (the fixture polled /health from the first moment)
    startup = main_server.startup
    assert startup is not None
    # Then /health answered before the model was ready: /status said "loading" with a 503
    assert startup.status_code == 503
    assert startup.status_body["status"] == "loading"
    assert "error" not in startup.status_body
    # The 503 "loading" above is what proves /health did not wait for the model; this loose
    # bound only catches a start that hangs (imports alone take seconds on a loaded machine).
    print(f"first /health {startup.seconds_to_first_health:.2f} s after spawn")
    assert startup.seconds_to_first_health < 60


def test_a_missing_model_is_an_error_in_status_and_health_stays_ok(
    tmp_path: Path, runtime_server: StartServer
) -> None:
    # Given an env file (the unit's EnvironmentFile) naming a model folder that is not there
    env_file = tmp_path / "env"
    env_file.write_text(f"MODEL_PATH={tmp_path / 'nope'}\nMODEL_NAME=ghost\nQUANTIZATION=none\n")
    # When the service starts with only ENV_FILE set
    server = runtime_server({"ENV_FILE": str(env_file)})
    body = server.wait_status("error", timeout=30)
    # Then /status is a 503 that says why, in the seed's format plus "error"
    response = httpx.get(f"{server.url}/status", timeout=5)
    assert response.status_code == 503
    assert body["model"] == "ghost"
    assert "nope" in body["error"] and "MODEL_PATH" in body["error"]
    # And the process is alive: /health is ok, generation is refused with 503
    assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "ok"
    generate = httpx.post(f"{server.url}/generate", json={"prompt": "hi"}, timeout=5)
    assert generate.status_code == 503
    assert "failed to load" in generate.json()["error"]["message"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_bnb_without_a_gpu_is_refused_unless_allowed(tiny_qwen3: Path, runtime_server: StartServer) -> None:
    # Given QUANTIZATION=bnb-4bit on a machine without a GPU, and no permission
    server = runtime_server({"MODEL_PATH": str(tiny_qwen3), "QUANTIZATION": "bnb-4bit"})
    # When the model loads / Then it refuses, naming the way out
    body = server.wait_status("error", timeout=60)
    assert "bnb-4bit" in body["error"] and "ALLOW_CPU_QUANTIZATION" in body["error"]
    assert httpx.get(f"{server.url}/status", timeout=5).status_code == 503


def test_bnb_4bit_serves_the_tiny_qwen3_when_allowed(tiny_qwen3: Path, runtime_server: StartServer) -> None:
    # Given QUANTIZATION=bnb-4bit, allowed on the CPU
    server = runtime_server(
        {"MODEL_PATH": str(tiny_qwen3), "QUANTIZATION": "bnb-4bit", "ALLOW_CPU_QUANTIZATION": "true"}
    )
    # When it loads / Then it is healthy and generates, in both APIs
    server.wait_status("healthy")
    generated = httpx.post(
        f"{server.url}/generate", json={"prompt": "hello", "max_tokens": 8, "ignore_eos": True}, timeout=60
    )
    assert generated.status_code == 200, generated.text
    assert generated.json()["usage"]["completion_tokens"] == 8
    chat = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert chat.status_code == 200


def test_bnb_4bit_really_quantizes_the_linear_layers(tiny_qwen3: Path) -> None:
    import bitsandbytes as bnb

    # Given the settings the service would read / When the engine loads them
    settings = RuntimeSettings(model_path=tiny_qwen3, quantization="bnb-4bit", allow_cpu_quantization=True)
    engine = Engine.load(settings)
    try:
        # Then the decoder's Linear layers are NF4 with double quantization, bf16 compute
        layers = [m for m in engine.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(layers) == 2 * 7  # q k v o + gate up down, in each of the 2 layers
        state = getattr(layers[0].weight, "quant_state")  # noqa: B009  (bnb Params4bit, untyped)
        assert state.quant_type == "nf4"
        assert state.nested  # double quantization
        assert layers[0].compute_dtype == torch.bfloat16
        assert engine.info.quantization == "bnb-4bit"
        result = engine.generate(
            engine.encode("hi"), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
        )
        assert result.completion_tokens == 5
    finally:
        engine.close()


def test_a_pre_quantized_checkpoint_loads_through_its_quantization_config(
    tiny_qwen3: Path, tmp_path: Path
) -> None:
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    # Given a checkpoint saved already 4-bit (its config.json carries a quantization_config)
    quantized = tmp_path / "tiny-qwen3-bnb"
    model = AutoModelForCausalLM.from_pretrained(
        tiny_qwen3,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        device_map={"": "cpu"},
    )
    model.save_pretrained(quantized)
    AutoTokenizer.from_pretrained(tiny_qwen3).save_pretrained(quantized)
    # When the engine loads it with QUANTIZATION=none
    engine = Engine.load(RuntimeSettings(model_path=quantized, allow_cpu_quantization=True))
    try:
        # Then the checkpoint's own quantization is used, and it generates
        assert engine.info.quantization == "checkpoint"
        assert engine.info.checkpoint_quant_method == "bitsandbytes"
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())
        result = engine.generate(
            engine.encode("hi"), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
        )
        assert result.completion_tokens == 3
    finally:
        engine.close()


@pytest.fixture
def lora_adapter(tiny_llama: Path, tmp_path: Path) -> Path:
    """A LoRA adapter on the tiny Llama with non-zero (seeded) weights, so it changes the output."""
    return build_tiny_lora(tiny_llama, tmp_path / "tiny-llama-lora")


def test_a_lora_adapter_is_served_on_its_base(
    tiny_llama: Path, lora_adapter: Path, runtime_server: StartServer
) -> None:
    # Given the greedy outputs of the base model and of base + adapter, computed directly
    prompt = "The quick brown fox"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    base_text = greedy(AutoModelForCausalLM.from_pretrained(tiny_llama), tokenizer, prompt, 20)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), lora_adapter)
    adapter_text = greedy(adapted, tokenizer, prompt, 20)
    assert adapter_text != base_text
    # When MODEL_PATH is the adapter folder (its adapter_config.json names the base)
    server = runtime_server({"MODEL_PATH": str(lora_adapter)})
    server.wait_status("healthy")
    response = httpx.post(
        f"{server.url}/generate",
        json={"prompt": prompt, "max_tokens": 20, "temperature": 0, "ignore_eos": True},
        timeout=60,
    )
    # Then the service answers as base + adapter
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == adapter_text
    assert response.json()["model"] == "tiny-llama-lora"
