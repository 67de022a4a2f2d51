"""core.loading: stream vs sync-then-load, and the plan that carries the choice."""

from __future__ import annotations

from typing import Any

import pytest

from asoba_deploy.core.loading import STREAMER_PACKAGES, choose_load, streamer_available
from asoba_deploy.core.requirement_sets import REQUIREMENTS
from asoba_deploy.core.snapshot import RuntimePython

WITH_STREAMER = RuntimePython(
    python="/opt/asoba-inference/venv/bin/python",
    source="runtime-venv",
    runai_model_streamer="0.17.0",
    runai_model_streamer_s3="0.17.1",
)
WITHOUT_STREAMER = RuntimePython(python="/usr/bin/python3", source="base-python", torch="2.13.0")


def choose(**overrides: Any) -> Any:
    facts: dict[str, Any] = {
        "preference": "auto",
        "safetensors": True,
        "quantization": "none",
        "adapter": False,
        "engine": "transformers",
        "runtime": WITH_STREAMER,
        "install_download": [],
        "on_disk": False,
    }
    facts.update(overrides)
    return choose_load(**facts)


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_unquantized_safetensors_stream_when_the_runtime_has_the_streamer(engine: str) -> None:
    choice = choose(engine=engine)
    assert choice.load_from == "stream"
    assert choice.reason.startswith(f"stream: unquantized safetensors, the {engine} engine streams")
    assert "runai-model-streamer 0.17.0" in choice.reason


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"safetensors": False}, "not all safetensors"),
        ({"adapter": True}, "a LoRA adapter"),
        ({"quantization": "awq"}, "awq weights load through the disk loaders"),
        ({"quantization": "bnb-4bit"}, "bnb-4bit weights"),
        ({"runtime": WITHOUT_STREAMER}, "not importable by the runtime's Python (/usr/bin/python3)"),
        ({"runtime": None}, "not importable by the runtime's Python"),
        ({"on_disk": True}, "already on the instance's disk"),
    ],
)
def test_each_unmet_condition_loads_from_disk_and_says_which(overrides: dict[str, Any], words: str) -> None:
    choice = choose(**overrides)
    assert choice.load_from == "disk"
    assert choice.reason.startswith("disk: ") and words in choice.reason


def test_a_new_venv_with_the_streamer_counts_as_having_it() -> None:
    # The first install builds the venv from the engine's set, which brings the streamer: the
    # base Python's lack of it does not matter then.
    choice = choose(runtime=WITHOUT_STREAMER, install_download=list(REQUIREMENTS["transformers"]))
    assert choice.load_from == "stream"
    assert "the install step's new venv brings runai-model-streamer" in choice.reason


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_both_requirement_sets_bring_the_streamer(engine: str) -> None:
    assert streamer_available(None, REQUIREMENTS[engine]) is not None  # type: ignore[index]
    lines = [line.split("==")[0] for line in REQUIREMENTS[engine]]  # type: ignore[index]
    assert all(package in lines for package in STREAMER_PACKAGES)


def test_the_context_key_forces_either() -> None:
    assert choose(preference="disk").load_from == "disk"
    assert choose(preference="disk").reason == "disk: the load_from context key says disk"
    forced = choose(preference="stream", on_disk=True)
    assert forced.load_from == "stream" and "the load_from context key says stream" in forced.reason
    # Forcing never streams what the runtime cannot stream.
    refused = choose(preference="stream", quantization="gptq")
    assert refused.load_from == "disk"
    assert "load_from=stream was asked for, but the runtime cannot stream this" in refused.reason


def test_the_planner_puts_the_choice_into_the_plan_and_install_passes_it_on() -> None:
    import re
    from pathlib import Path

    import yaml

    from asoba_deploy.core.config import DeployConfig
    from asoba_deploy.core.contracts import DeployRequest
    from asoba_deploy.core.policy import Policy
    from asoba_deploy.core.settings import Settings
    from asoba_deploy.core.state import ExecutionState
    from asoba_deploy.core.steps import install_parameters
    from tests.unit.planner_support import seed_snapshot
    from tests.unit.test_engines import VLLM_PYTHON, plan_of, smollm2, with_capabilities

    streamer = VLLM_PYTHON.model_copy(
        update={"runai_model_streamer": "0.17.0", "runai_model_streamer_s3": "0.17.1"}
    )
    snapshot = with_capabilities(seed_snapshot(), runtime=streamer)
    config = Settings(
        deploy=DeployConfig(instance_ids=["i-0123456789abcdef0"], model_bucket="asoba-llm-cache")
    )
    declared = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "ssm_documents" / "install.yaml").read_text()
    )["parameters"]

    def install(plan: Any) -> dict[str, str]:
        state = ExecutionState(
            request=DeployRequest(model=plan.model), instance_id="i-0123456789abcdef0", plan=plan
        )
        sent = install_parameters(config, state)
        for name in ("LoadFrom", "ModelSourceUri"):
            rule = declared[name]
            assert sent[name] in rule.get("allowedValues", []) or re.fullmatch(
                rule["allowedPattern"], sent[name]
            )
        return sent

    streamed = plan_of(smollm2(), snapshot)
    assert (streamed.engine, streamed.load_from) == ("vllm", "stream")
    assert streamed.load_reason.startswith("stream: unquantized safetensors, the vllm engine streams")
    assert streamed.time_to_healthy is not None and streamed.time_to_healthy.basis["load_from"] == "stream"
    sent = install(streamed)
    assert (sent["LoadFrom"], sent["ModelSourceUri"]) == ("stream", streamed.source_uri)

    # Without the streamer in the runtime's Python, the first install's new venv brings it.
    fresh = plan_of(smollm2(), with_capabilities(seed_snapshot()))
    assert fresh.install_download == list(REQUIREMENTS["vllm"])
    assert fresh.load_from == "stream" and "the install step's new venv brings" in fresh.load_reason
    forced = plan_of(smollm2(), snapshot, Policy(load_from="disk"))
    assert (forced.load_from, forced.load_reason) == ("disk", "disk: the load_from context key says disk")
    sent = install(forced)
    assert (sent["LoadFrom"], sent["ModelSourceUri"]) == ("disk", "")
