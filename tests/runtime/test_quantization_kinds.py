"""Every quantization kind a plan can name has a load path in the runtime.

bnb-4bit and bnb-8bit quantize on load with bitsandbytes (or, for a bitsandbytes checkpoint,
load it as stored); awq and gptq load a pre-quantized checkpoint through its own
quantization_config, and refuse any other checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import get_args

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from instance_runtime.engine import Engine, bitsandbytes_config, resolve_quantization
from instance_runtime.errors import ConfigurationError
from instance_runtime.generation import SamplingParams
from instance_runtime.settings import Quantization, RuntimeSettings

KINDS = get_args(Quantization)
STORED = {"awq": "awq", "gptq": "gptq", "bnb-4bit": "bitsandbytes", "bnb-8bit": "bitsandbytes"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_loads_its_own_checkpoint_as_stored(kind: str) -> None:
    if kind == "none":
        assert resolve_quantization(kind, None, "cuda", False) == "none"
        return
    assert resolve_quantization(kind, STORED[kind], "cuda", False) == "checkpoint"


@pytest.mark.parametrize(
    ("requested", "checkpoint", "device", "allow", "expected"),
    [
        ("bnb-8bit", None, "cuda", False, "bnb-8bit"),
        ("bnb-8bit", None, "cpu", True, "bnb-8bit"),
        ("bnb-8bit", "gptq", "cuda", False, "checkpoint"),
        ("none", "gptq", "cuda", False, "checkpoint"),
    ],
)
def test_bnb_8bit_and_gptq_follow_the_setting_and_the_checkpoint(
    requested: str, checkpoint: str | None, device: str, allow: bool, expected: str
) -> None:
    assert resolve_quantization(requested, checkpoint, device, allow) == expected


@pytest.mark.parametrize(
    ("requested", "checkpoint", "device", "message"),
    [
        ("gptq", None, "cuda", "pre-quantized GPTQ"),
        ("gptq", "awq", "cuda", "'awq', not GPTQ"),
        ("awq", "gptq", "cuda", "'gptq', not AWQ"),
        ("bnb-8bit", None, "cpu", "ALLOW_CPU_QUANTIZATION"),
    ],
)
def test_impossible_new_kinds_are_refused_with_a_reason(
    requested: str, checkpoint: str | None, device: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve_quantization(requested, checkpoint, device, False)


def test_on_load_configs_are_bitsandbytes_4bit_nf4_and_8bit() -> None:
    four, eight = bitsandbytes_config("bnb-4bit"), bitsandbytes_config("bnb-8bit")
    assert four is not None and four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    assert eight is not None and eight.load_in_8bit and not eight.load_in_4bit
    assert bitsandbytes_config("none") is None and bitsandbytes_config("checkpoint") is None


def test_bnb_8bit_really_quantizes_the_linear_layers(tiny_qwen3: Path) -> None:
    import bitsandbytes as bnb
    import torch

    # Given QUANTIZATION=bnb-8bit, allowed on the CPU / When the engine loads the model
    settings = RuntimeSettings(model_path=tiny_qwen3, quantization="bnb-8bit", allow_cpu_quantization=True)
    engine = Engine.load(settings)
    try:
        # Then the decoder's Linear layers hold int8 weights (LLM.int8()), and it generates
        layers = [m for m in engine.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
        assert len(layers) == 2 * 7  # q k v o + gate up down, in each of the 2 layers
        assert layers[0].weight.dtype == torch.int8
        assert engine.info.quantization == "bnb-8bit"
        result = engine.generate(
            engine.encode("hi"), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
        )
        assert result.completion_tokens == 5
    finally:
        engine.close()


def test_a_bnb_8bit_checkpoint_loads_as_stored_under_the_plans_setting(
    tiny_qwen3: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    # Given a checkpoint saved 8-bit: the planner names it bnb-8bit (prequantized)
    quantized = tmp_path / "tiny-qwen3-int8"
    model = AutoModelForCausalLM.from_pretrained(
        tiny_qwen3, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": "cpu"}
    )
    model.save_pretrained(quantized)
    AutoTokenizer.from_pretrained(tiny_qwen3).save_pretrained(quantized)
    # When the engine loads it with QUANTIZATION=bnb-8bit
    with caplog.at_level(logging.WARNING, logger="instance_runtime.engine"):
        engine = Engine.load(
            RuntimeSettings(model_path=quantized, quantization="bnb-8bit", allow_cpu_quantization=True)
        )
    try:
        # Then the checkpoint's own quantization is used, without a misleading "ignored"
        assert engine.info.quantization == "checkpoint"
        assert engine.info.checkpoint_quant_method == "bitsandbytes"
        assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in engine.model.modules())
        assert not [r for r in caplog.records if "ignored" in r.getMessage()]
        result = engine.generate(
            engine.encode("hi"), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
        )
        assert result.completion_tokens == 3
    finally:
        engine.close()
