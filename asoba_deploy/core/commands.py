"""Send an SSM document to the instance and follow its invocation.

The state machine waits between polls (Wait states); these functions only act once per
call, except `wait`, the loop of a caller that may sleep (the CLI). A command's result is the
JSON object its script prints as the last stdout line.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from asoba_deploy.core.errors import DeployError, InstanceUnavailable

STDOUT_TAIL = 2000


class InvocationDoesNotExist(Exception):
    """SSM has not registered the invocation yet; the state machine retries with backoff."""


class ThrottlingException(Exception):
    """SSM throttled the call; the state machine retries with backoff."""


class CommandRef(BaseModel):
    """What the state machine carries between send and poll (at $.command)."""

    model_config = ConfigDict(extra="ignore")

    step: str
    document: str
    command_id: str
    instance_id: str
    sent_at: float
    first_sent_at: float
    deadline: float
    attempt: int = 1
    status: Literal["InProgress", "Success", "Resend"] = "InProgress"
    ssm_status: str = "Pending"
    result: dict[str, Any] | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    expect: dict[str, Any] | None = None  # what a successful result must show (see core/steps.py)
    execution_name: str | None = None  # the log correlation id
    finished_at: float | None = None  # when the command itself ended (SSM's clock)
    seen_at: float | None = None  # when a poll first saw it ended


def _raise_transient(error: ClientError) -> None:
    code = error.response.get("Error", {}).get("Code", "")
    if code == "InvocationDoesNotExist":
        raise InvocationDoesNotExist(str(error)) from None
    if code in ("ThrottlingException", "TooManyUpdates", "RequestLimitExceeded"):
        raise ThrottlingException(str(error)) from None


def send(
    ssm: Any,
    *,
    step: str,
    document: str,
    instance_id: str,
    parameters: dict[str, str],
    timeout_seconds: int,
    now: float,
    log_group: str = "",
    comment: str = "",
    previous: CommandRef | None = None,
) -> CommandRef:
    """Start the document; a resend keeps the first attempt's deadline."""
    kwargs: dict[str, Any] = {
        "InstanceIds": [instance_id],
        "DocumentName": document,
        "Parameters": {name: [value] for name, value in parameters.items()},
        "TimeoutSeconds": max(30, min(timeout_seconds, 2592000)),
        "Comment": comment[:100],
    }
    if log_group:
        kwargs["CloudWatchOutputConfig"] = {
            "CloudWatchLogGroupName": log_group,
            "CloudWatchOutputEnabled": True,
        }
    try:
        command = ssm.send_command(**kwargs)["Command"]
    except ClientError as error:
        _raise_transient(error)
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("InvalidInstanceId", "InvalidInstanceInformationFilterValue"):
            raise InstanceUnavailable(f"instance {instance_id} cannot take commands: {code}") from None
        raise
    first = previous.first_sent_at if previous else now
    deadline = previous.deadline if previous else now + timeout_seconds
    return CommandRef(
        step=step,
        document=document,
        command_id=command["CommandId"],
        instance_id=instance_id,
        sent_at=now,
        first_sent_at=first,
        deadline=deadline,
        attempt=(previous.attempt + 1) if previous else 1,
    )


def last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _timestamp(value: Any) -> float | None:
    """GetCommandInvocation gives ISO 8601 strings (the API's StringDateTime)."""
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value).timestamp()
    return None


TERMINAL_FAILURES = ("Failed", "TimedOut", "Cancelled", "Cancelling", "Undeliverable", "Terminated")


def poll(ssm: Any, ref: CommandRef, *, now: float, error: type[DeployError]) -> CommandRef:
    """Read the invocation once. Ended well: status Success with its result. Still running:
    InProgress (or `error` once the deadline passed, after cancelling it). Ended badly: `error`."""
    try:
        invocation = ssm.get_command_invocation(CommandId=ref.command_id, InstanceId=ref.instance_id)
    except ClientError as client_error:
        _raise_transient(client_error)
        raise
    status = invocation.get("Status", "Pending")
    stdout = invocation.get("StandardOutputContent", "") or ""
    stderr = invocation.get("StandardErrorContent", "") or ""
    updated = ref.model_copy(
        update={
            "ssm_status": status,
            "stdout_tail": stdout[-STDOUT_TAIL:],
            "stderr_tail": stderr[-STDOUT_TAIL:],
        }
    )
    if status in ("Pending", "InProgress", "Delayed"):
        if now > ref.deadline:
            # already ended or unknown: the step fails either way
            with contextlib.suppress(ClientError):
                ssm.cancel_command(CommandId=ref.command_id, InstanceIds=[ref.instance_id])
            waited = int(now - ref.first_sent_at)
            if status in ("Pending", "Delayed"):
                raise InstanceUnavailable(
                    f"{ref.document}: instance {ref.instance_id} did not pick up the command in {waited} s"
                )
            raise error(f"{ref.document} did not finish within {waited} s on {ref.instance_id}")
        return updated.model_copy(update={"status": "InProgress"})

    result = last_json_line(stdout)
    finished_at = _timestamp(invocation.get("ExecutionEndDateTime")) or now
    updated = updated.model_copy(update={"result": result, "finished_at": finished_at, "seen_at": now})
    if status == "Success":
        return updated.model_copy(update={"status": "Success"})
    details = invocation.get("StatusDetails", status)
    if details in ("DeliveryTimedOut", "Undeliverable", "Terminated"):
        raise InstanceUnavailable(f"{ref.document}: instance {ref.instance_id} did not answer ({details})")
    reason = (result or {}).get("error") or (stderr.strip().splitlines() or [details])[-1]
    raise error(f"{ref.document} {status.lower()} on {ref.instance_id}: {reason}")


def wait(
    ssm: Any,
    ref: CommandRef,
    *,
    error: type[DeployError],
    sleep: Callable[[float], None],
    poll_seconds: float,
    clock: Callable[[], float] = time.time,
) -> CommandRef:
    """Poll until the command ends, for a caller that may sleep (the deploy-model CLI; the state
    machine waits in Wait states instead). Returns the Success ref with its result; raises as
    `poll` does. An invocation SSM has not registered yet and throttling are polled again."""
    while True:
        try:
            ref = poll(ssm, ref, now=clock(), error=error)
        except (InvocationDoesNotExist, ThrottlingException):
            if clock() > ref.deadline:
                raise InstanceUnavailable(
                    f"{ref.document}: instance {ref.instance_id} did not pick up the command "
                    f"in {int(clock() - ref.first_sent_at)} s"
                ) from None
        else:
            if ref.status != "InProgress":
                return ref
        sleep(poll_seconds)
