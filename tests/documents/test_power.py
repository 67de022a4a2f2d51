"""Stopping and starting the sandbox's EC2 instance powers it off and on (local/sandbox/power.py):
the services die with it, SSM reports it ConnectionLost and holds commands, and on start the
enabled units come back before the agent is Online again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.sandbox import Sandbox, send_document, wait_invocation
from local.sandbox.sandbox import free_port, port_open
from tests.documents.test_agent import SLEEPER, make_document
from tests.fixtures import Aws

FLUX = "flux-api.service"


def _until(what: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout_s} s: {what}")


def _state(aws: Aws, instance_id: str) -> str:
    reservations = aws.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def _ping(aws: Aws, instance_id: str) -> str:
    info = aws.ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])[
        "InstanceInformationList"
    ]
    return str(info[0]["PingStatus"])


@pytest.fixture
def sleeper(aws: Aws) -> str:
    make_document(aws, "sandbox-sleeper", SLEEPER)
    return "sandbox-sleeper"


@pytest.fixture
def powered_sandbox(make_sandbox: Callable[..., Sandbox]) -> tuple[Sandbox, int, int]:
    sandbox = make_sandbox()
    flux_port, manual_port = free_port(), free_port()
    sandbox.install_fake_flux(flux_port)  # enabled: WantedBy=multi-user.target
    sandbox.install_fake_flux(manual_port, unit="manual.service", gpu_mib=0)
    sandbox.systemctl("disable", "manual.service")  # started by hand, not at boot
    return sandbox, flux_port, manual_port


def test_a_stopped_instance_is_powered_off_and_comes_back_with_its_enabled_units(
    aws: Aws, powered_sandbox: tuple[Sandbox, int, int], sleeper: str
) -> None:
    sandbox, flux_port, manual_port = powered_sandbox
    assert _ping(aws, sandbox.instance_id) == "Online"
    # When the instance is stopped
    answer = aws.ec2.stop_instances(InstanceIds=[sandbox.instance_id])["StoppingInstances"][0]
    # Then EC2 says stopping, then stopped; the services are down and SSM has lost the agent
    assert answer["CurrentState"]["Name"] == "stopping"
    assert not port_open(flux_port) and not port_open(manual_port)
    assert sandbox.unit_state(FLUX)["ActiveState"] == "inactive"
    assert _ping(aws, sandbox.instance_id) == "ConnectionLost"
    _until(lambda: _state(aws, sandbox.instance_id) == "stopped")
    # and a command sent meanwhile waits for delivery
    command_id = send_document(aws.ssm, sandbox, sleeper)
    time.sleep(0.3)
    invocation = aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
    assert invocation["Status"] == "Pending"

    # When it is started
    answer = aws.ec2.start_instances(InstanceIds=[sandbox.instance_id])["StartingInstances"][0]
    # Then it is pending, then running; the enabled unit restarts by itself, the other does not
    assert (answer["PreviousState"]["Name"], answer["CurrentState"]["Name"]) == ("stopped", "pending")
    _until(lambda: _state(aws, sandbox.instance_id) == "running")
    _until(lambda: _ping(aws, sandbox.instance_id) == "Online")
    assert sandbox.unit_state(FLUX)["ActiveState"] == "active"
    _until(lambda: port_open(flux_port))
    assert sandbox.unit_state("manual.service")["ActiveState"] == "inactive"
    # and the held command is delivered and runs
    assert wait_invocation(aws.ssm, sandbox, command_id).status == "Success"


def test_a_stopping_instance_cannot_be_started(aws: Aws, powered_sandbox: tuple[Sandbox, int, int]) -> None:
    sandbox, _, _ = powered_sandbox
    sandbox.shutdown_s = 2.0
    aws.ec2.stop_instances(InstanceIds=[sandbox.instance_id])
    with pytest.raises(ClientError) as refused:
        aws.ec2.start_instances(InstanceIds=[sandbox.instance_id])
    assert refused.value.response["Error"]["Code"] == "IncorrectInstanceState"
    _until(lambda: _state(aws, sandbox.instance_id) == "stopped")
    aws.ec2.start_instances(InstanceIds=[sandbox.instance_id])
    _until(lambda: _ping(aws, sandbox.instance_id) == "Online")
