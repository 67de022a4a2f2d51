"""IAM bites here as on AWS: a Lambda's calls run with its own role's policies (local/iam.py).

The missing-grant test deploys a template with one statement removed. The session's stack
has the same physical names and moto's backends are process-wide, so that deployment runs in
a fresh interpreter (`python -m tests.e2e.test_iam WORKDIR OUT`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local import iam
from local.executions import run_execution

ROOT = Path(__file__).resolve().parents[2]


def drop_lock_table_grant(template: dict[str, Any]) -> None:
    """Remove the Lock function's DynamoDB statement (the one CDK's grant_read_write_data adds)."""
    dropped = 0
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::IAM::Policy" or not logical_id.startswith("FunctionsLockRole"):
            continue
        statements = resource["Properties"]["PolicyDocument"]["Statement"]
        kept = [s for s in statements if "dynamodb:PutItem" not in s["Action"]]
        dropped += len(statements) - len(kept)
        resource["Properties"]["PolicyDocument"]["Statement"] = kept
    assert dropped == 1, f"expected one DynamoDB statement on the Lock role, dropped {dropped}"


def _deploy_without_lock_grant(workdir: Path, out: Path) -> None:
    from local.environment import LocalEnvironment

    env = LocalEnvironment.start(workdir, template_edit=drop_lock_table_grant)
    try:
        model = workdir / "model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        (model / "model.safetensors").write_bytes(b"\0" * 16)
        env.upload_model("tiny-llama", model)
        result = run_execution(
            env.cloud.client("stepfunctions"),
            env.stack.state_machine_arn,
            {"model": "tiny-llama"},
            name="lock-without-grant",
        )
        out.write_text(
            json.dumps(
                {
                    "status": result.status,
                    "error": result.error,
                    "cause": result.cause,
                    "states": result.states_entered,
                }
            )
        )
    finally:
        env.stop()


def test_a_missing_grant_fails_the_deployment_with_access_denied(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    environment = os.environ | {
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION": "1",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "tests.e2e.test_iam", str(tmp_path / "env"), str(out)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["status"] == "FAILED"
    # AcquireLock fails; the rollout's iteration re-raises its error unchanged (stacks/rollout.py)
    assert result["states"][-3:] == ["AcquireLock", "FailedInFleet?", "InstanceFailed"], result["states"]
    assert "AccessDenied" in (result["cause"] or ""), result
    assert "dynamodb:" in result["cause"] and "assumed-role/" in result["cause"]


def _function_role(local_cloud: Any, deployed_stack: Any, function_id: str) -> tuple[str, str]:
    name = deployed_stack.functions[function_id]
    role = local_cloud.client("lambda").get_function(FunctionName=name)["Configuration"]["Role"]
    return str(role), str(name)


def test_a_missing_key_is_403_to_the_plan_role_and_404_to_the_harness(
    local_cloud: Any, deployed_stack: Any, model_bucket: str
) -> None:
    s3 = local_cloud.client("s3")
    role, name = _function_role(local_cloud, deployed_stack, "Plan")
    with iam.acting_as(role, name), pytest.raises(ClientError) as denied:
        s3.get_object(Bucket=model_bucket, Key="catalog.json")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=model_bucket, Key="catalog.json")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


def test_each_function_acts_as_its_own_role(
    local_cloud: Any, deployed_stack: Any, tiny_in_bucket: str, instance: Any
) -> None:
    iam.TRACE.clear()
    result = run_execution(
        local_cloud.client("stepfunctions"),
        deployed_stack.state_machine_arn,
        {"model": tiny_in_bucket, "dry_run": True},
    )
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    checked = {(principal.split("/")[-1], check.action) for principal, check, _ in iam.TRACE}
    validate = deployed_stack.functions["ValidateInput"]
    plan = deployed_stack.functions["Plan"]
    assert (validate, "s3:ListBucket") in checked
    assert (validate, "ec2:DescribeInstances") in checked
    assert (plan, "s3:GetObject") in checked
    functions = set(deployed_stack.functions.values())
    denied = [
        (p, c) for p, c, d in iam.TRACE if d is not iam.Decision.ALLOW and p.split("/")[-1] in functions
    ]
    # the only refusal a function meets in a dry run: Plan's optional catalog read (403 without
    # ListBucket); the instance's agent meets its own (a download's listing) in test_instance_iam
    assert all(c.action == "s3:ListBucket" and p.endswith(plan) for p, c in denied), denied


def test_the_state_machine_invokes_each_function_with_its_own_role(
    local_cloud: Any, deployed_stack: Any, tiny_in_bucket: str, instance: Any
) -> None:
    # Step Functions calls lambda:Invoke as the state machine's role: without its grant on the
    # Plan function, the execution stops at Plan, refused with the role and the function named.
    sfn = local_cloud.client("stepfunctions")
    client = local_cloud.client("iam")
    role = sfn.describe_state_machine(stateMachineArn=deployed_stack.state_machine_arn)["roleArn"].split("/")[
        -1
    ]
    plan = deployed_stack.functions["Plan"]
    originals = {
        name: client.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        for name in client.list_role_policies(RoleName=role)["PolicyNames"]
    }
    removed = 0
    for name, document in originals.items():
        document = json.loads(document) if isinstance(document, str) else json.loads(json.dumps(document))
        for statement in document["Statement"]:
            resources = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            kept = [r for r in resources if f":function:{plan}" not in r]
            removed += len(resources) - len(kept)
            statement["Resource"] = kept
        document["Statement"] = [st for st in document["Statement"] if st["Resource"]]
        client.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))
    assert removed >= 1, originals
    try:
        result = run_execution(
            sfn, deployed_stack.state_machine_arn, {"model": tiny_in_bucket, "dry_run": True}
        )
    finally:
        for name, document in originals.items():
            text = document if isinstance(document, str) else json.dumps(document)
            client.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=text)
    assert result.status == "FAILED"
    said = f"{result.error} {result.cause}"
    assert "/states is not authorized to perform: lambda:InvokeFunction" in said and plan in said, said
    again = run_execution(sfn, deployed_stack.state_machine_arn, {"model": tiny_in_bucket, "dry_run": True})
    assert again.status == "SUCCEEDED", (again.error, again.cause)


if __name__ == "__main__":
    _deploy_without_lock_grant(Path(sys.argv[1]), Path(sys.argv[2]))
