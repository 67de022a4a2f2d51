"""Which instances a deployment may target and how the wake-up treats them (core/validate_input.py,
core/wake.py), against moto's EC2: a stopped instance is accepted and started, a terminated one is
refused, and a wake that never sees the agent Online ends with InstanceUnavailable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from asoba_deploy.core.errors import InstanceUnavailable
from asoba_deploy.core.validate_input import check_instance_running
from asoba_deploy.core.wake import wake
from local.sandbox import agent


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    agent.install()  # DescribeInstanceInformation, which moto lacks: only sandboxes are listed
    with mock_aws():
        yield boto3.client("ec2", region_name="us-west-2"), boto3.client("ssm", region_name="us-west-2")


def _launch(ec2: Any) -> str:
    return str(
        ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    )


def test_a_stopped_instance_is_accepted_and_started(clients: tuple[Any, Any]) -> None:
    ec2, ssm = clients
    instance_id = _launch(ec2)
    ec2.stop_instances(InstanceIds=[instance_id])
    assert check_instance_running(ec2, instance_id)["state"] == "stopped"
    first = wake(ec2, ssm, instance_id, previous=None, budget_s=60, now=1_000.0, wait_s=2)
    assert (first.started, first.awake, first.wait_seconds, first.deadline) == (True, False, 2, 1_060.0)
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["State"]["Name"] == "running"
    # never Online (no agent registered it): the budget ends the wait
    with pytest.raises(InstanceUnavailable, match="not running and Online"):
        wake(ec2, ssm, instance_id, previous=first, budget_s=60, now=1_061.0)


def test_a_terminated_instance_is_refused(clients: tuple[Any, Any]) -> None:
    ec2, ssm = clients
    instance_id = _launch(ec2)
    ec2.terminate_instances(InstanceIds=[instance_id])
    with pytest.raises(InstanceUnavailable, match="terminated"):
        check_instance_running(ec2, instance_id)
    with pytest.raises(InstanceUnavailable, match="cannot be started"):
        wake(ec2, ssm, instance_id, previous=None, budget_s=60, now=0.0)
