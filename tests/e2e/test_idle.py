"""The idle policy end to end: the scheduled check (validate mode, as the EventBridge rule starts
it) reads the runtime's /metrics counters on the instance, leaves a busy instance alone, stops an
idle one (the emulated EC2 reports it stopped, its services go down), and a deployment onto the
stopped instance starts it, waits for it to run and be Online, and succeeds.

"Short" is deterministic: the policy is set to a fraction of a minute (60 ms), far below the time
between two checks, and a check that sees the counters move (or is the first to see them) starts
the idle clock at its own reading, so a busy instance reads as idle for 0 s whatever the timing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from asoba_deploy.core.config import RUNTIME_UNIT
from local.executions import ExecutionResult, run_execution
from local.sandbox.sandbox import port_open
from tests.conftest import Ports
from tests.e2e.helpers import get_json
from tests.e2e.test_cli import cli  # noqa: F401 - the deploy-model console script, as a user runs it

SHORT_MINUTES = 0.001  # 60 ms


def _function(local_cloud: Any, handler: str) -> str:
    for function in local_cloud.client("lambda").list_functions()["Functions"]:
        if function["Handler"] == handler:
            return str(function["FunctionName"])
    raise AssertionError(f"no function with handler {handler}")


@pytest.fixture
def short_idle_policy(local_cloud: Any, deployed_stack: Any, instance_id: str) -> Iterator[None]:
    """The stack as `cdk deploy -c idle_stop_minutes=0.001` leaves the check's function (the
    machine's definition does not depend on the setting), restored afterwards."""
    lambda_ = local_cloud.client("lambda")
    name = _function(local_cloud, "handlers.check_instance.handler")
    variables = dict(lambda_.get_function_configuration(FunctionName=name)["Environment"]["Variables"])
    deploy = json.loads(variables["ASOBA_DEPLOY"])
    changed = {**variables, "ASOBA_DEPLOY": json.dumps({**deploy, "idle_stop_minutes": SHORT_MINUTES})}
    lambda_.update_function_configuration(FunctionName=name, Environment={"Variables": changed})
    # no activity seen before this test (the session's other checks leave their readings)
    local_cloud.client("dynamodb").delete_item(
        TableName=deployed_stack.outputs["ActivityTable"], Key={"instance_id": {"S": instance_id}}
    )
    try:
        yield
    finally:
        lambda_.update_function_configuration(FunctionName=name, Environment={"Variables": variables})


def _ec2_state(local_cloud: Any, instance_id: str) -> str:
    reservations = local_cloud.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def _until(what: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s")
        time.sleep(0.1)


@pytest.fixture
def wakes_up_after(local_cloud: Any, instance: Any, instance_id: str) -> Iterator[None]:
    """Whatever the test leaves, the next test finds the instance running and Online."""
    yield
    if _ec2_state(local_cloud, instance_id) != "running":
        _until(lambda: _ec2_state(local_cloud, instance_id) in ("stopped", "running"))
        if _ec2_state(local_cloud, instance_id) == "stopped":
            local_cloud.client("ec2").start_instances(InstanceIds=[instance_id])
        _until(lambda: instance.powered and _ec2_state(local_cloud, instance_id) == "running")


def _check(sfn: Any, machine_arn: str, instance_id: str) -> ExecutionResult:
    result = run_execution(sfn, machine_arn, {"mode": "validate", "instance_id": instance_id})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    return result


def _request(port: int) -> None:
    code, body = get_json(
        f"http://127.0.0.1:{port}/generate", {"prompt": "hello", "max_tokens": 2, "temperature": 0}
    )
    assert code == 200, body


def test_idle_instance_is_stopped_busy_one_kept_and_a_deploy_wakes_it(
    sfn: Any,
    machine_arn: str,
    local_cloud: Any,
    deployed_stack: Any,
    instance: Any,
    instance_id: str,
    ports: Ports,
    tiny_in_bucket: str,
    short_idle_policy: None,
    wakes_up_after: None,
    cli: Any,  # noqa: F811
) -> None:
    # Given a model deployed and serving
    deploy = {"model": tiny_in_bucket, "instance_id": instance_id, "benchmark": False}
    first = run_execution(sfn, machine_arn, deploy, timeout=600)
    assert first.status == "SUCCEEDED", (first.error, first.cause)
    assert "WakeInstance.Wait" not in first.states_entered  # running: straight through
    started = _check(sfn, machine_arn, instance_id).output["idle"]  # the clock starts here
    assert started["stopped"] is False

    # When a request arrives before the next check, that check leaves the busy instance alone
    _request(ports.coexist)
    busy = _check(sfn, machine_arn, instance_id).output["idle"]
    assert (busy["stopped"], busy["idle_seconds"], busy["requests_served"]) == (False, 0.0, 1)
    assert _ec2_state(local_cloud, instance_id) == "running"
    status = cli("status", "--instance-id", instance_id)
    assert status.code == 0, status.err
    assert re.search(rf"^{instance_id}: running, no request for \d+ s$", status.out, re.M), status.out

    # When no request arrives until the next check, the idle instance is stopped
    idle = _check(sfn, machine_arn, instance_id).output["idle"]
    assert idle["stopped"] is True and idle["requests_served"] == 0
    assert idle["idle_seconds"] >= SHORT_MINUTES * 60
    assert _ec2_state(local_cloud, instance_id) in ("stopping", "stopped")
    assert not port_open(ports.coexist) and not port_open(ports.flux)  # its services are down
    _until(lambda: _ec2_state(local_cloud, instance_id) == "stopped")
    records = local_cloud.client("dynamodb").query(
        TableName=deployed_stack.outputs["LedgerTable"],
        KeyConditionExpression="instance_id = :id",
        ExpressionAttributeValues={":id": {"S": instance_id}},
        ScanIndexForward=False,
        Limit=1,
    )["Items"]
    assert json.loads(records[0]["record"]["S"])["outcome"] == "idle-stopped"
    status = cli("status", "--instance-id", instance_id)
    assert re.search(rf"^{instance_id}: stopped$", status.out, re.M), status.out
    # and the next scheduled check reports it stopped instead of failing
    asleep = _check(sfn, machine_arn, instance_id)
    assert "CheckSkipped" in asleep.states_entered and "CheckInstance" not in asleep.states_entered

    # When a deployment targets the stopped instance
    woken = run_execution(sfn, machine_arn, deploy, timeout=600)

    # Then it started the instance, waited in Wait states until it ran and was Online, and deployed
    assert woken.status == "SUCCEEDED", (woken.error, woken.cause)
    entered = woken.states_entered
    assert "WakeInstance.Wait" in entered
    assert entered.index("WakeInstance.Done") < entered.index("CollectResources")
    assert _ec2_state(local_cloud, instance_id) == "running"
    assert instance.unit_state(RUNTIME_UNIT)["ActiveState"] == "active"
    _request(ports.coexist)


def test_start_brings_a_stopped_instance_back_with_its_resident_services(
    local_cloud: Any,
    instance: Any,
    instance_id: str,
    ports: Ports,
    wakes_up_after: None,
    cli: Any,  # noqa: F811
) -> None:
    # Given the instance stopped (as the idle policy stops it), Flux down with it
    local_cloud.client("ec2").stop_instances(InstanceIds=[instance_id])
    _until(lambda: _ec2_state(local_cloud, instance_id) == "stopped")
    assert not port_open(ports.flux)
    # When the user starts it
    run = cli("start", "--instance-id", instance_id)
    # Then it waited until the instance ran and its agent was Online, and Flux (an enabled unit)
    # came back by its own restart
    assert run.code == 0, run.err
    assert f"{instance_id} started: running, SSM agent Online" in run.out
    assert _ec2_state(local_cloud, instance_id) == "running"
    info = local_cloud.client("ssm").describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]
    )["InstanceInformationList"]
    assert info[0]["PingStatus"] == "Online"
    _until(lambda: port_open(ports.flux), timeout_s=30)
    # and starting a running instance changes nothing
    again = cli("start", "--instance-id", instance_id)
    assert again.code == 0 and f"{instance_id} was already running" in again.out
