"""Every quantization the planner chooses reaches Install with parameters the document accepts.

A plan naming a kind the install document (or the runtime's settings) refuses fails at
Install, after the sync and after Flux was stopped. Here the real planner plans a GPTQ
checkpoint and a bitsandbytes 8-bit checkpoint (the planner's only way to `gptq` and
`bnb-8bit`: it loads a pre-quantized checkpoint as stored), the real step builds the Install
parameters, and SSM's own checks (the local emulator's `resolve_parameters`) judge them.
No sandbox: plain unit speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.manifest import Manifest
from asoba_deploy.core.planner import Plan, plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.settings import Settings, StackResources
from asoba_deploy.core.state import ExecutionState
from asoba_deploy.core.steps import install_parameters
from instance_runtime.settings import RuntimeSettings
from local.sandbox.validation import InvalidParameters, resolve_parameters
from local.sparse_models import (
    DEEPSEEK_R1_8B,
    QWEN3_14B,
    Tensor,
    decoder_tensors,
    manifest_from_tensors,
    seed_manifest,
)
from tests.unit.planner_support import seed_snapshot

INSTALL = Path(__file__).resolve().parents[2] / "ssm_documents" / "install.yaml"
INSTANCE_ID = "i-0123456789abcdef0"
GROUP = 128


def _is_linear(tensor: Tensor) -> bool:
    return len(tensor.shape) == 2 and ".layers." in tensor.name and tensor.name.endswith("_proj.weight")


def gptq_tensors(config: dict[str, Any]) -> list[Tensor]:
    """AutoGPTQ packing, 4-bit: each Linear [out, in] becomes qweight I32 [in/8, out],
    qzeros I32 [in/g, out/8], scales F16 [in/g, out], g_idx I32 [in]; the rest F16."""
    tensors: list[Tensor] = []
    for tensor in decoder_tensors(config, "F16"):
        if not _is_linear(tensor):
            tensors.append(tensor)
            continue
        out_features, in_features = tensor.shape
        stem = tensor.name.removesuffix(".weight")
        tensors += [
            Tensor(f"{stem}.qweight", "I32", (in_features // 8, out_features)),
            Tensor(f"{stem}.qzeros", "I32", (in_features // GROUP, out_features // 8)),
            Tensor(f"{stem}.scales", "F16", (in_features // GROUP, out_features)),
            Tensor(f"{stem}.g_idx", "I32", (in_features,)),
        ]
    return tensors


def int8_tensors(config: dict[str, Any]) -> list[Tensor]:
    """bitsandbytes LLM.int8() as transformers saves it: each Linear's weight I8 [out, in]
    and its row scales SCB F32 [out]; the rest F16."""
    tensors: list[Tensor] = []
    for tensor in decoder_tensors(config, "F16"):
        tensors.append(Tensor(tensor.name, "I8", tensor.shape) if _is_linear(tensor) else tensor)
        if _is_linear(tensor):
            tensors.append(Tensor(tensor.name.removesuffix(".weight") + ".SCB", "F32", (tensor.shape[0],)))
    return tensors


def gptq_checkpoint() -> Manifest:
    config = {
        **QWEN3_14B,
        "torch_dtype": "float16",
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False},
    }
    return manifest_from_tensors("qwen3-14b-gptq", config, gptq_tensors(QWEN3_14B), shards=3)


def int8_checkpoint() -> Manifest:
    config = {
        **DEEPSEEK_R1_8B,
        "torch_dtype": "float16",
        "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False},
    }
    return manifest_from_tensors("deepseek-r1-8b-int8", config, int8_tensors(DEEPSEEK_R1_8B), shards=2)


def planned(manifest: Manifest, **request: Any) -> tuple[DeployRequest, Plan]:
    deploy = DeployRequest(model=manifest.name, **request)
    return deploy, plan(manifest, seed_snapshot(), deploy, Policy())


def install_values(deploy: DeployRequest, result: Plan) -> dict[str, str]:
    """The Install step's parameters for this plan, as the state machine would build them."""
    config = Settings(
        deploy=DeployConfig(instance_ids=[INSTANCE_ID], model_bucket="models"),
        stack=StackResources(
            runtime_bundle_uri="https://s3.us-west-2.amazonaws.com/cdk-assets-bucket/assets/runtime.zip"
        ),
    )
    state = ExecutionState.model_validate(
        {
            "request": deploy.model_dump(mode="json"),
            "instance_id": INSTANCE_ID,
            "plan": result.model_dump(mode="json"),
        }
    )
    return install_parameters(config, state)


def install_definitions() -> dict[str, Any]:
    parameters = yaml.safe_load(INSTALL.read_text())["parameters"]
    assert isinstance(parameters, dict)
    return parameters


def accepted_by_install(values: dict[str, str]) -> dict[str, str]:
    """What SSM resolves for a SendCommand of install with `values` (InvalidParameters if refused)."""
    return resolve_parameters(install_definitions(), {name: [value] for name, value in values.items()})


def test_a_gptq_checkpoint_plan_reaches_install() -> None:
    # Given a GPTQ checkpoint of Qwen3-14B, planned for the seed's instance
    deploy, result = planned(gptq_checkpoint())
    assert (result.quantization, result.prequantized, result.fits) == ("gptq", True, True)
    assert result.dtype == "float16"  # the GPTQ kernels compute in fp16
    # When the Install step builds its parameters / Then the document accepts every one
    resolved = accepted_by_install(install_values(deploy, result))
    assert resolved["Quantization"] == "gptq"
    assert resolved["ModelName"] == "qwen3-14b-gptq"
    # And the env file's QUANTIZATION is a value the runtime's settings read
    assert RuntimeSettings(model_path=Path(resolved["ModelPath"]), quantization="gptq").quantization == "gptq"


def test_a_bnb_8bit_checkpoint_plan_reaches_install() -> None:
    # Given a bitsandbytes 8-bit checkpoint of DeepSeek-R1-Distill-Llama-8B; force_quantize is
    # ignored for a checkpoint already quantized, so 8-bit is what the plan loads
    deploy, result = planned(int8_checkpoint(), force_quantize=True)
    assert (result.quantization, result.prequantized, result.fits) == ("bnb-8bit", True, True)
    assert any("force_quantize ignored" in warning for warning in result.warnings)
    # When the Install step builds its parameters / Then the document accepts every one
    resolved = accepted_by_install(install_values(deploy, result))
    assert resolved["Quantization"] == "bnb-8bit"
    settings = RuntimeSettings(model_path=Path(resolved["ModelPath"]), quantization="bnb-8bit")
    assert settings.quantization == "bnb-8bit"


def test_the_old_allowed_values_would_have_refused_both() -> None:
    # The check above has teeth: the document's former list refuses these plans' values.
    definitions = install_definitions()
    former = ["none", "bnb-4bit", "awq"]
    definitions["Quantization"] = {**definitions["Quantization"], "allowedValues": former}
    for checkpoint in (gptq_checkpoint(), int8_checkpoint()):
        values = install_values(*planned(checkpoint))
        with pytest.raises(InvalidParameters, match="Quantization"):
            resolve_parameters(definitions, {name: [value] for name, value in values.items()})


@pytest.mark.parametrize(
    ("model", "request_fields", "kind"),
    [
        ("deepseek-r1-8b", {}, "none"),
        ("deepseek-r1-8b", {"force_quantize": True}, "bnb-4bit"),
        ("qwen3-14b", {}, "awq"),
    ],
)
def test_the_other_kinds_reach_install_too(model: str, request_fields: dict[str, Any], kind: str) -> None:
    deploy, result = planned(seed_manifest(model), **request_fields)
    assert result.quantization == kind
    assert accepted_by_install(install_values(deploy, result))["Quantization"] == kind
