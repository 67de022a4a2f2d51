"""Event-driven step completion through the synthesized machine, the real rule and completer.

The instance steps wait in `<Step>.Await` (`.waitForTaskToken`); the sandbox agent publishes
SSM's status-change events, the local cloud's EventBridge delivers them to the completer
(local/events.py). These tests lose events, reorder the token against the command's end and
refuse a delivery, and check each step still ends as it would on AWS.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from asoba_deploy.core.completion import DETAIL_TYPE
from local import events, iam, lambda_runner
from local.executions import run_execution, wait_for_execution
from local.sandbox import agent

COLLECT = "CollectResources"


def _is_collect_event(event: dict[str, Any]) -> bool:
    return str(event.get("detail", {}).get("document-name", "")).endswith("-collect-resources")


def _command_ids(history: list[dict[str, Any]], step: str) -> list[str]:
    """The command ids `step`'s send returned in this execution (its TaskSucceeded outputs)."""
    ids = []
    for event in history:
        details = event.get("taskSucceededEventDetails") or {}
        output = details.get("output")
        if not output:
            continue
        value = json.loads(output)
        if isinstance(value, dict) and value.get("step") == step and value.get("command_id"):
            ids.append(str(value["command_id"]))
    return list(dict.fromkeys(ids))


def _deliveries(command_id: str) -> list[events.Delivery]:
    return [
        d
        for d in [*events.DELIVERED, *events.FAILED]
        if d.event.get("detail", {}).get("command-id") == command_id
    ]


def _verdict(delivery: events.Delivery) -> str:
    return str(json.loads(delivery.detail or "{}").get("verdict"))


def test_the_status_event_completes_the_step(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str
) -> None:
    result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True})

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    (command_id,) = _command_ids(result.history, "collect_resources")
    events.wait_idle()
    # the terminal event reached the completer, and the completer ended the step
    terminal = [d for d in _deliveries(command_id) if d.event["detail"]["status"] == "Success"]
    assert [(d.outcome, _verdict(d)) for d in terminal] == [("invoked", "completed")]
    assert terminal[0].event["detail-type"] == DETAIL_TYPE
    assert terminal[0].event["detail"]["instance-id"] == instance.instance_id
    # its calls were authorized as its own role (local/iam.py), as on AWS
    decided = {
        (check.action, decision)
        for principal, check, decision in iam.TRACE
        if "CommandEvents" in principal and check.action.startswith(("states:", "dynamodb:", "ssm:"))
    }
    assert {
        ("dynamodb:GetItem", iam.Decision.ALLOW),
        ("dynamodb:DeleteItem", iam.Decision.ALLOW),
        ("ssm:GetCommandInvocation", iam.Decision.ALLOW),
        ("states:SendTaskSuccess", iam.Decision.ALLOW),
    } <= decided


def test_a_lost_status_event_still_ends_the_step(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str
) -> None:
    # Given every status-change event of collect-resources is lost on its way
    with events.drop(_is_collect_event) as lost:
        result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True})

    # Then the step still ended, through the safety net: its Await timed out and read again
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    (command_id,) = _command_ids(result.history, "collect_resources")
    assert any(e["detail"]["command-id"] == command_id and e["detail"]["status"] == "Success" for e in lost)
    assert all(d.outcome == "dropped" for d in _deliveries(command_id))
    assert result.states_entered.count(f"{COLLECT}.Await") >= 2
    assert result.output["fits"] is True


def test_a_step_that_ends_before_its_token_is_stored_still_completes(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str
) -> None:
    # Given the Await's Lambda starts only after the command ended AND its terminal event was
    # handled by the completer (which then found no token)
    def is_collect_await(event: dict[str, Any]) -> bool:
        return event.get("action") == "await" and event.get("command", {}).get("step") == "collect_resources"

    def event_handled(event: dict[str, Any]) -> bool:
        command_id = event["command"]["command_id"]
        return any(
            d.event["detail"]["status"] == "Success" and d.outcome == "invoked"
            for d in _deliveries(command_id)
        )

    with lambda_runner.hold(is_collect_await, until=event_handled) as held:
        result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True})

    # Then the step completed anyway: the Await stored its token, then read the ended command
    assert held, "the Await was never held"
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    (command_id,) = _command_ids(result.history, "collect_resources")
    terminal = [d for d in _deliveries(command_id) if d.event["detail"]["status"] == "Success"]
    assert [_verdict(d) for d in terminal] == ["unknown"]
    assert result.output["fits"] is True


def _completer(local_cloud: Any, deployed_stack: Any) -> tuple[str, str]:
    """The completer's function name and its rule's ARN, as deployed."""
    name = deployed_stack.functions["CommandEvents"]
    rules = local_cloud.client("events").list_rules()["Rules"]
    (rule,) = [r for r in rules if "CommandEnded" in r["Name"]]
    return name, str(rule["Arn"])


def _emit_unknown_command_event(instance_id: str, document: str) -> str:
    """What SSM would publish for a command no step waits on (the agent's own event format)."""
    from moto.events.models import events_backends

    command_id = str(uuid.uuid4())
    detail = {
        "command-id": command_id,
        "document-name": document,
        "instance-id": instance_id,
        "requested-date-time": "2026-01-01T00:00:00.000Z",
        "status": "Success",
    }
    events_backends["123456789012"]["us-west-2"].put_events(
        [{"Source": "aws.ssm", "DetailType": DETAIL_TYPE, "Detail": json.dumps(detail)}]
    )
    return command_id


def _wait_for_delivery(command_id: str, timeout: float = 30) -> list[events.Delivery]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _deliveries(command_id)
        if found:
            events.wait_idle()
            return found
        time.sleep(0.05)
    raise AssertionError(f"no delivery of {command_id} within {timeout} s")


def test_an_unknown_command_does_nothing_and_a_delivery_the_policy_refuses_fails(
    local_cloud: Any, deployed_stack: Any, instance: Any
) -> None:
    name, rule_arn = _completer(local_cloud, deployed_stack)
    document = deployed_stack.documents["collect-resources"]
    lambda_client = local_cloud.client("lambda")

    # An event of a command no step waits for reaches the completer, which does nothing
    (delivery,) = _wait_for_delivery(_emit_unknown_command_event(instance.instance_id, document))
    assert (delivery.outcome, _verdict(delivery)) == ("invoked", "unknown")

    # Without the resource policy statement CDK's target added, EventBridge may not invoke it
    policy = json.loads(lambda_client.get_policy(FunctionName=name)["Policy"])
    (statement,) = [s for s in policy["Statement"] if s["Principal"] == {"Service": "events.amazonaws.com"}]
    lambda_client.remove_permission(FunctionName=name, StatementId=statement["Sid"])
    try:
        (refused,) = _wait_for_delivery(_emit_unknown_command_event(instance.instance_id, document))
        assert refused.outcome == "refused"
        assert "events.amazonaws.com" in refused.detail
    finally:
        lambda_client.add_permission(
            FunctionName=name,
            StatementId=statement["Sid"],
            Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com",
            SourceArn=rule_arn,
        )
    (allowed,) = _wait_for_delivery(_emit_unknown_command_event(instance.instance_id, document))
    assert allowed.outcome == "invoked"


@pytest.fixture(scope="module")
def second_sandbox(
    local_cloud: Any, second_instance_id: str, deployed_stack: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The stack's second instance, with a GPU of another size than the first's (so each step's
    result tells which instance it came from)."""
    from local.cloud import free_port
    from local.sandbox.sandbox import Sandbox

    box = Sandbox(
        tmp_path_factory.mktemp("second-instance"),
        second_instance_id,
        gpu=True,
        endpoint_url=local_cloud.endpoint,
        gpu_memory_mib=SECOND_GPU_MIB,
        hostname="ip-10-0-0-11",
    )
    try:
        box.install_fake_flux(free_port())
        yield box
    finally:
        box.close()


SECOND_GPU_MIB = 46068  # an L40S-sized GPU; the first sandbox's is an A10G's 23028 MiB


def _collect_result(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The command object CollectResources.Await ended with (its token's output)."""
    for event in history:
        if event.get("type") == "TaskSucceeded":
            output = json.loads(event["taskSucceededEventDetails"].get("output") or "null")
            if (
                isinstance(output, dict)
                and output.get("step") == "collect_resources"
                and output.get("result")
            ):
                return output
    raise AssertionError("no finished collect-resources command in the history")


def test_two_instances_events_never_cross(
    sfn: Any, machine_arn: str, instance: Any, second_sandbox: Any, tiny_in_bucket: str
) -> None:
    # Given the same step runs on both instances at the same time
    arns = {
        box.instance_id: sfn.start_execution(
            stateMachineArn=machine_arn,
            name=f"two-{box.instance_id[-6:]}-{uuid.uuid4().hex[:6]}",
            input=json.dumps({"model": tiny_in_bucket, "dry_run": True, "instance_id": box.instance_id}),
        )["executionArn"]
        for box in (instance, second_sandbox)
    }
    results = {instance_id: wait_for_execution(sfn, arn) for instance_id, arn in arns.items()}

    # Then each execution's step ended with its own instance's command and result
    for box in (instance, second_sandbox):
        result = results[box.instance_id]
        assert result.status == "SUCCEEDED", (box.instance_id, result.error, result.cause)
        finished = _collect_result(result.history)
        sent_here = {run.command.command_id for run in agent.runs_for(box.instance_id)}
        assert finished["instance_id"] == box.instance_id
        assert finished["command_id"] in sent_here
        gpus = finished["result"]["gpus"]
        expected_mib = SECOND_GPU_MIB if box is second_sandbox else 23028
        assert [g["memory_total_bytes"] for g in gpus] == [expected_mib * 1048576]
        # and the completer completed it from that instance's own event
        events.wait_idle()
        (terminal,) = [
            d for d in _deliveries(finished["command_id"]) if d.event["detail"]["status"] == "Success"
        ]
        assert terminal.event["detail"]["instance-id"] == box.instance_id
