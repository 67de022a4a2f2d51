"""The Validate state of the synthesized machine, executed in moto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from local.executions import run_execution


@pytest.fixture(scope="module")
def machine(deployed_stack: Any, local_cloud: Any, tiny_model: Path, model_bucket: str) -> tuple[Any, str]:
    from local.bucket import upload_model

    upload_model(local_cloud.client("s3"), model_bucket, "tiny-llama", tiny_model)
    return local_cloud.client("stepfunctions"), deployed_stack.state_machine_arn


def test_valid_input_passes_validate(machine: tuple[Any, str], instance_id: str) -> None:
    sfn, arn = machine
    result = run_execution(sfn, arn, {"model": "tiny-llama", "dry_run": True})
    assert "ValidateInput" in result.states_exited
    validated = result.state_output("ValidateInput")
    assert validated["request"]["model"] == "tiny-llama"
    assert validated["instance_id"] == instance_id
    assert validated["model_source"]["uri"] == "s3://asoba-llm-cache/tiny-llama/"


def test_unknown_model_fails_model_not_found(machine: tuple[Any, str]) -> None:
    sfn, arn = machine
    result = run_execution(sfn, arn, {"model": "no-such-model"})
    assert result.status == "FAILED"
    assert result.error == "ModelNotFound"
    assert "no-such-model" in (result.cause or "")
    assert result.states_entered == ["ValidateInput"]


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"dry_run": True}, "model"),
        ({"model": "../etc"}, "model"),
        ({"model": "a;rm -rf /"}, "model"),
        ({"model": ""}, "model"),
        ({"model": "tiny-llama", "dry_run": "yes"}, "dry_run"),
        ({"model": "tiny-llama", "port": 22}, "port"),
        ({"model": "tiny-llama", "surprise": 1}, "surprise"),
        ({"model": "tiny-llama", "instance_id": "i-0000000000000dead"}, "instance_id"),
        ("just a string", "JSON object"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_input_fails_invalid_input(machine: tuple[Any, str], payload: Any, named: str) -> None:
    sfn, arn = machine
    result = run_execution(sfn, arn, payload)
    assert result.status == "FAILED"
    assert result.error == "InvalidInput"
    assert named in (result.cause or "")
    assert result.states_entered == ["ValidateInput"], "nothing after ValidateInput may run on bad input"


def test_stopped_instance_fails_instance_unavailable(
    machine: tuple[Any, str], local_cloud: Any, deployed_stack: Any
) -> None:
    sfn, arn = machine
    ec2 = local_cloud.client("ec2")
    other = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[other])
    # The stack only manages its configured instances: naming another one is refused.
    result = run_execution(sfn, arn, {"model": "tiny-llama", "instance_id": other})
    assert result.error == "InvalidInput"
