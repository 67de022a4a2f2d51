"""The instance's own calls run with the instance role: the stack's instance policy, nothing more.

The agent's aws:downloadContent (s5cmd for a fresh image) and its CloudWatch output are
authorized against the policy attached to the sandbox's role (local/environment.py
attach_instance_role). Each test swaps in a copy of the policy with one statement or resource
removed, runs the scheduled validation, and puts the real policy back.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from local import iam
from local.executions import run_execution
from local.sandbox import agent


@contextlib.contextmanager
def instance_policy_edited(
    local_cloud: Any, sandbox: Any, deployed_stack: Any, edit: Callable[[dict[str, Any]], None]
) -> Iterator[None]:
    client = local_cloud.client("iam")
    real = deployed_stack.outputs["InstancePolicyArn"]
    version = client.get_policy(PolicyArn=real)["Policy"]["DefaultVersionId"]
    document = client.get_policy_version(PolicyArn=real, VersionId=version)["PolicyVersion"]["Document"]
    document = json.loads(document) if isinstance(document, str) else copy.deepcopy(document)
    edit(document)
    trimmed = client.create_policy(
        PolicyName=f"trimmed-{uuid.uuid4().hex[:8]}", PolicyDocument=json.dumps(document)
    )
    trimmed_arn = trimmed["Policy"]["Arn"]
    role = str(sandbox.instance_role_arn).rsplit("/", 1)[-1]
    client.detach_role_policy(RoleName=role, PolicyArn=real)
    client.attach_role_policy(RoleName=role, PolicyArn=trimmed_arn)
    try:
        yield
    finally:
        client.detach_role_policy(RoleName=role, PolicyArn=trimmed_arn)
        client.attach_role_policy(RoleName=role, PolicyArn=real)
        client.delete_policy(PolicyArn=trimmed_arn)


def validate(local_cloud: Any, deployed_stack: Any, instance_id: str) -> Any:
    return run_execution(
        local_cloud.client("stepfunctions"),
        deployed_stack.state_machine_arn,
        {"mode": "validate", "instance_id": instance_id},
    )


def last_check_instance_run(instance_id: str) -> Any:
    runs = [run for run in agent.runs_for(instance_id) if run.document_name.endswith("check-instance")]
    return max(runs, key=lambda run: run.requested)


def command_streams(local_cloud: Any, group: str, command_id: str, want: str) -> list[str]:
    """The command's streams in the group, once ``want`` is among them (the agent streams output
    beside the command, not before its status) or 20 s have passed."""
    logs = local_cloud.client("logs")
    deadline = time.monotonic() + 20
    while True:
        streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=command_id)["logStreams"]
        names = sorted(stream["logStreamName"] for stream in streams)
        if want in names or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


def test_the_instance_role_fetches_s5cmd_and_streams_command_output(
    local_cloud: Any, deployed_stack: Any, sandbox: Any, instance_id: str
) -> None:
    iam.TRACE.clear()
    result = validate(local_cloud, deployed_stack, instance_id)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    run = last_check_instance_run(instance_id)
    role = str(sandbox.instance_role_arn).rsplit("/", 1)[-1]
    by_instance = {
        (check.action, decision) for principal, check, decision in iam.TRACE if f"/{role}/" in principal
    }
    assert ("s3:GetObject", iam.Decision.ALLOW) in by_instance
    # the agent lists <key>/ first; the policy grants no listing of the asset bucket, so it falls
    # back to the one file, as the real agent does
    assert ("s3:ListBucket", iam.Decision.IMPLICIT_DENY) in by_instance
    assert ("logs:CreateLogGroup", iam.Decision.ALLOW) in by_instance
    assert ("logs:DescribeLogGroups", iam.Decision.ALLOW) in by_instance
    assert run.cloudwatch_error == "" and run.log_group
    want = f"{run.command.command_id}/{instance_id}/checkInstance/stdout"
    streams = command_streams(local_cloud, run.log_group, run.command.command_id, want)
    assert want in streams, streams


def _drop_s5cmd_object(document: dict[str, Any]) -> None:
    """The GetObject grant keeps the models and the runtime bundle (a .zip), loses s5cmd."""
    dropped = 0
    for statement in document["Statement"]:
        if statement.get("Action") in ("s3:GetObject", ["s3:GetObject"]):
            resources = statement["Resource"]
            kept = [r for r in resources if "-assets-" not in r or r.endswith(".zip")]
            dropped += len(resources) - len(kept)
            statement["Resource"] = kept
    assert dropped == 1, document


def test_without_the_s5cmd_grant_the_check_fails_at_the_agents_fetch(
    local_cloud: Any, deployed_stack: Any, sandbox: Any, instance_id: str
) -> None:
    with instance_policy_edited(local_cloud, sandbox, deployed_stack, _drop_s5cmd_object):
        result = validate(local_cloud, deployed_stack, instance_id)
    assert result.status == "FAILED"
    assert "bringS5cmd" in (result.cause or "") and "AccessDenied" in (result.cause or ""), result.cause


def _drop_create_log_group(document: dict[str, Any]) -> None:
    kept = [s for s in document["Statement"] if s.get("Sid") != "AgentCreatesCommandOutputGroup"]
    assert len(kept) == len(document["Statement"]) - 1
    document["Statement"] = kept


def test_without_create_log_group_the_agent_stops_streaming_and_the_command_goes_on(
    local_cloud: Any, deployed_stack: Any, sandbox: Any, instance_id: str
) -> None:
    with instance_policy_edited(local_cloud, sandbox, deployed_stack, _drop_create_log_group):
        result = validate(local_cloud, deployed_stack, instance_id)
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    run = last_check_instance_run(instance_id)
    deadline = time.monotonic() + 20  # the upload runs beside the command's end
    while not run.cloudwatch_error and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "logs:CreateLogGroup" in run.cloudwatch_error, run.cloudwatch_error


def _drop_model_listing(document: dict[str, Any]) -> None:
    kept = [s for s in document["Statement"] if s.get("Action") not in ("s3:ListBucket", ["s3:ListBucket"])]
    assert len(kept) == len(document["Statement"]) - 1
    document["Statement"] = kept


def test_the_scripts_own_s3_requests_are_the_instance_roles(
    local_cloud: Any, deployed_stack: Any, sandbox: Any, instance_id: str
) -> None:
    # check-instance lists the model prefix with the s5cmd it brought, signed with the
    # instance's key: without the ListBucket grant S3 refuses it, and the check says so.
    with instance_policy_edited(local_cloud, sandbox, deployed_stack, _drop_model_listing):
        result = validate(local_cloud, deployed_stack, instance_id)
    assert result.status == "FAILED" and "failed checks: s3" in (result.cause or ""), result.cause
    checks = json.loads(last_check_instance_run(instance_id).steps[-1].stdout.strip().splitlines()[-1])
    s3 = next(check for check in checks["checks"] if check["name"] == "s3")
    assert s3["status"] == "fail" and "AccessDenied" in s3["detail"], s3
