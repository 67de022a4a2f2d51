"""The AWQ and GPTQ checkpoints that local.quantized_models writes: the packing orders of the
published formats, RTN error bounds, the config the engines read, and how each engine takes them
before any kernel runs (vLLM checks the format against QUANTIZATION; transformers refuses
without gptqmodel, naming ENGINE=vllm). Serving them for real: test_vllm_quantized.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
import torch
from safetensors.torch import load_file

from instance_runtime.engine import Engine, missing_format_packages
from instance_runtime.errors import ConfigurationError
from instance_runtime.settings import RuntimeSettings
from instance_runtime.vllm_engine import _engine_args
from local.quantized_models import (
    AWQ_ORDER,
    QuantFormat,
    _pack_rows,
    _unpack_rows,
    build_quantized_model,
    dequantize_awq,
    dequantize_gptq,
    dequantized_state_dict,
    quantize_awq,
    quantize_gptq,
)

FORMATS: tuple[QuantFormat, ...] = get_args(QuantFormat)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def checkpoints(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quantized")
    return {fmt: build_quantized_model(tiny_llama, root / f"tiny-llama-{fmt}", fmt) for fmt in FORMATS}


def test_awq_packs_eight_output_channels_in_its_interleaved_order() -> None:
    # Output channels 0..7 holding the values 0..7: nibble i holds channel AWQ_ORDER[i]
    values = torch.arange(8).reshape(1, 8)
    word = int(_pack_rows(values, AWQ_ORDER)[0, 0])
    assert word == 0x75316420
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == list(AWQ_ORDER)


def test_gptq_packs_eight_input_channels_in_order() -> None:
    q = torch.zeros(16, 8, dtype=torch.int64)  # [in, out]
    q[:8, 3] = torch.arange(8)  # inputs 0..7 of output 3
    qweight = _pack_rows(q.t().contiguous()).t()  # [in / 8, out], as quantize_gptq packs it
    assert qweight.shape == (2, 8)
    assert int(qweight[0, 3]) == 0x76543210
    assert int(qweight[1, 3]) == 0 and int(qweight[0, 0]) == 0


def test_packing_round_trips_every_nibble_including_the_sign_bit() -> None:
    torch.manual_seed(0)
    values = torch.randint(0, 16, (64, 128))
    values[0, :8] = 15  # all ones: the int32 is negative
    for order in (tuple(range(8)), AWQ_ORDER):
        packed = _pack_rows(values, order)
        assert packed.dtype == torch.int32 and packed.shape == (64, 16)
        assert int(packed[0, 0]) == -1
        assert torch.equal(_unpack_rows(packed, order), values)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_to_nearest_stays_within_one_step_of_every_weight(fmt: QuantFormat) -> None:
    torch.manual_seed(1)
    weight = torch.randn(64, 128) * 0.2  # [out, in]
    if fmt == "awq":
        packed = quantize_awq(weight, 32)
        restored = dequantize_awq(packed["qweight"], packed["qzeros"], packed["scales"], 32)
    else:
        packed = quantize_gptq(weight, 32)
        restored = dequantize_gptq(packed["qweight"], packed["qzeros"], packed["scales"], packed["g_idx"])
    step = packed["scales"].float().t().repeat_interleave(32, dim=1)  # [out, in]
    error = (restored - weight).abs()
    assert float((error / step).max()) <= 1.0 + 1e-3
    assert float((error / step).mean()) < 0.3  # ~0.25 for uniform rounding error
    relative = float(((restored - weight).pow(2).mean() / weight.pow(2).mean()).sqrt())
    assert relative < 0.12
    # All 16 levels in use: the full 4-bit range, not a coarser grid
    q = _unpack_rows(packed["qweight"], AWQ_ORDER) if fmt == "awq" else _unpack_rows(packed["qweight"].t())
    assert set(q.unique().tolist()) == set(range(16))


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_files_are_in_the_published_layout(checkpoints: dict[str, Path], fmt: QuantFormat) -> None:
    folder = checkpoints[fmt]
    config = json.loads((folder / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == fmt and qc["bits"] == 4 and qc["group_size"] == 32
    assert config["dtype"] == "float16"
    if fmt == "awq":
        assert qc["version"] == "gemm" and qc["zero_point"] is True
    else:
        assert qc["sym"] is True and qc["desc_act"] is False and qc["checkpoint_format"] == "gptq"
    assert (folder / "tokenizer.json").is_file()
    tensors = load_file(folder / "model.safetensors")
    prefix = "model.layers.0.mlp.down_proj"  # in 256 -> out 128
    assert f"{prefix}.weight" not in tensors
    assert tensors[f"{prefix}.qweight"].dtype == torch.int32
    assert tensors[f"{prefix}.scales"].dtype == torch.float16
    assert tensors[f"{prefix}.scales"].shape == (256 // 32, 128)
    assert tensors[f"{prefix}.qzeros"].shape == (256 // 32, 128 // 8)
    if fmt == "awq":
        assert tensors[f"{prefix}.qweight"].shape == (256, 128 // 8)
        assert f"{prefix}.g_idx" not in tensors
    else:
        assert tensors[f"{prefix}.qweight"].shape == (256 // 8, 128)
        assert torch.equal(tensors[f"{prefix}.g_idx"], (torch.arange(256) // 32).int())
        assert torch.all(tensors[f"{prefix}.qzeros"] == 0x77777777)  # zero 8, stored minus one
    quantized = {name.rsplit(".", 2)[-2] for name in tensors if name.endswith(".qweight")}
    assert quantized == set(LINEARS)
    assert tensors["model.embed_tokens.weight"].dtype == torch.float16  # unquantized, in dtype


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantized_weights_are_close_to_the_float_ones(
    tiny_llama: Path, checkpoints: dict[str, Path], fmt: QuantFormat
) -> None:
    original = load_file(tiny_llama / "model.safetensors")
    restored = dequantized_state_dict(checkpoints[fmt])
    assert set(restored) == set(original)
    for name, weight in original.items():
        error = float(((restored[name] - weight).pow(2).mean() / weight.pow(2).mean()).sqrt())
        assert error < (0.12 if "_proj" in name else 1e-3), name


def test_a_rebuild_with_the_same_recipe_is_skipped(tiny_llama: Path, tmp_path: Path) -> None:
    dest = build_quantized_model(tiny_llama, tmp_path / "awq", "awq")
    written = (dest / "model.safetensors").stat().st_mtime_ns
    assert build_quantized_model(tiny_llama, dest, "awq") == dest
    assert (dest / "model.safetensors").stat().st_mtime_ns == written
    build_quantized_model(tiny_llama, dest, "awq", group_size=64)  # another recipe: rebuilt
    assert json.loads((dest / "config.json").read_text())["quantization_config"]["group_size"] == 64


def test_a_layer_that_does_not_fit_the_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_awq(torch.zeros(64, 48), 32)


# ----- what each engine makes of them, before any kernel ----------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_vllm_engine_loads_the_checkpoint_as_stored(checkpoints: dict[str, Path], fmt: QuantFormat) -> None:
    args = _engine_args(RuntimeSettings(model_path=checkpoints[fmt], quantization=fmt, engine="vllm"))
    assert args["quantization"] is None  # vLLM reads the checkpoint's quantization_config
    assert args["dtype"] == "auto"  # the checkpoint's float16


@pytest.mark.parametrize(
    ("requested", "checkpoint", "message"),
    [
        ("awq", "gptq", "quantized with 'gptq'"),
        ("gptq", "awq", "quantized with 'awq'"),
        ("awq", None, "not quantized"),
    ],
)
def test_vllm_engine_refuses_a_checkpoint_of_another_format(
    checkpoints: dict[str, Path], tiny_llama: Path, requested: str, checkpoint: str | None, message: str
) -> None:
    folder = checkpoints[checkpoint] if checkpoint else tiny_llama
    settings = RuntimeSettings(model_path=folder, quantization=requested, engine="vllm")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message):
        _engine_args(settings)


def test_vllm_engine_refuses_float32_activations_for_4bit_kernels(checkpoints: dict[str, Path]) -> None:
    settings = RuntimeSettings(model_path=checkpoints["gptq"], dtype="float32", engine="vllm")
    with pytest.raises(ConfigurationError, match="DTYPE=float32"):
        _engine_args(settings)


@pytest.mark.parametrize("fmt", FORMATS)
def test_transformers_engine_without_gptqmodel_names_the_engine_that_loads_it(
    checkpoints: dict[str, Path], fmt: QuantFormat
) -> None:
    # The main venv's pins hold neither gptqmodel nor optimum (gptqmodel needs a newer torch)
    assert missing_format_packages(fmt)
    with pytest.raises(ConfigurationError, match="ENGINE=vllm"):
        Engine.load(RuntimeSettings(model_path=checkpoints[fmt], quantization=fmt))
