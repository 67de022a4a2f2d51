"""Send an SSM document to the instance and follow its invocation.

The state machine waits between polls (Wait states); these functions only act once per
call, except `wait`, the loop of a caller that may sleep (the CLI). A command's result is the
JSON object its script prints as the last stdout line.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from asoba_deploy.core.errors import DeployError, InstanceUnavailable

# The failure cause carries this much of a failed command's stderr/stdout (the state never does).
FAILURE_TAIL = 1500
# GetCommandInvocation keeps the first 24,000 characters of stdout and ends a cut one with this
# (amazon-ssm-agent: agent/framework/processor/executer/iohandler/iohandler.go
# DefaultOutputConfig's OutputTruncatedSuffix, applied by runpluginutil.go's StringPrefix).
TRUNCATED_SUFFIX = "--output truncated--"
# The agent's marker in the combined output (iohandler.go truncateOut); the emulator used it.
TRUNCATED_MARKER = "\n---Output truncated---"
STDOUT_LIMIT = 24_000
# Poll back-off: wait a tenth of the time the step has run, at least the configured interval,
# at most MAX_WAIT_SECONDS; so a step polls O(log budget + budget / MAX_WAIT_SECONDS) times and
# a deployment's history stays far below 25,000 events at any interval (local/limits.py).
BACKOFF_FRACTION = 0.1
MAX_WAIT_SECONDS = 30
# A retried send looks this far back for the command its first attempt may have sent.
RESEND_LOOKBACK_SECONDS = 900


class InvocationDoesNotExist(Exception):
    """SSM has not registered the invocation yet; the state machine retries with backoff."""


class ThrottlingException(Exception):
    """SSM throttled the call; the state machine retries with backoff."""


class CommandRef(BaseModel):
    """What the state machine carries between send and poll (at $.command)."""

    model_config = ConfigDict(extra="ignore")

    step: str
    document: str
    # The document's steps in order (GetCommandInvocation's PluginName): a document with several
    # must be read one step at a time; the last is the script with the result line.
    plugins: list[str] = Field(default_factory=list)
    command_id: str
    instance_id: str
    sent_at: float
    first_sent_at: float
    deadline: float
    attempt: int = 1
    status: Literal["InProgress", "Success", "Resend"] = "InProgress"
    ssm_status: str = "Pending"
    result: dict[str, Any] | None = None
    wait_seconds: int = 1  # the next Wait (SecondsPath): see next_wait
    # The Await's TimeoutSecondsPath: one safety-net round (see await_timeout); the SSM event ends it sooner
    await_seconds: int = 600
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


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


IN_FLIGHT = ("Pending", "InProgress", "Delayed")


def cancel_in_flight(ssm: Any, *, instance_id: str, execution_name: str, since: float) -> list[str]:
    """Cancel this execution's commands still running on the instance (sent since `since`, the
    comment naming the execution): when one branch of a parallel group fails, Step Functions
    stops the other branch's state, not its command. The ids cancelled."""
    cancelled: list[str] = []
    for status in ("Pending", "InProgress"):  # ListCommands' Status filter takes no "Delayed"
        kwargs: dict[str, Any] = {
            "InstanceId": instance_id,
            "Filters": [{"key": "Status", "value": status}, {"key": "InvokedAfter", "value": _iso(since)}],
        }
        while True:
            try:
                page = ssm.list_commands(**kwargs)
            except ClientError as error:
                _raise_transient(error)
                raise
            for command in page.get("Commands", []):
                # SSM filters on its side; moto ignores Filters, so both are checked here again
                mine = str(command.get("Comment", "")).endswith(f" {execution_name}")
                if command.get("Status") in IN_FLIGHT and mine and command["CommandId"] not in cancelled:
                    with contextlib.suppress(ClientError):  # it ended meanwhile
                        ssm.cancel_command(CommandId=command["CommandId"], InstanceIds=[instance_id])
                    cancelled.append(str(command["CommandId"]))
            token = page.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    return cancelled


def find_sent(
    ssm: Any, *, instance_id: str, document: str, comment: str, since: float
) -> dict[str, Any] | None:
    """The command already sent to `instance_id` with this document and comment since `since`.
    SendCommand has no client token; the comment names the execution, step and attempt."""
    kwargs: dict[str, Any] = {
        "InstanceId": instance_id,
        # SSM filters on its side; moto ignores Filters, so both are checked here again
        "Filters": [
            {"key": "DocumentName", "value": document},
            {"key": "InvokedAfter", "value": _iso(since)},
        ],
    }
    while True:
        try:
            page = ssm.list_commands(**kwargs)
        except ClientError as error:
            _raise_transient(error)
            raise
        for command in page.get("Commands", []):
            if command.get("Comment") == comment and command.get("DocumentName") == document:
                requested = _timestamp(command.get("RequestedDateTime"))
                if requested is None or requested >= since:
                    return dict(command)
        token = page.get("NextToken")
        if not token:
            return None
        kwargs["NextToken"] = token


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
    idempotent: bool = False,
    plugins: tuple[str, ...] = (),
) -> CommandRef:
    """Start the document; a resend keeps the first attempt's deadline. `idempotent`: `comment`
    names this send uniquely (execution, step, attempt), and a command already sent under it
    (the Lambda retried after SendCommand went through) is returned instead of a second one."""
    comment = comment[:100]  # SendCommand's limit
    first = previous.first_sent_at if previous else now
    deadline = previous.deadline if previous else now + timeout_seconds
    attempt = (previous.attempt + 1) if previous else 1
    found = None
    if idempotent and comment:
        found = find_sent(
            ssm,
            instance_id=instance_id,
            document=document,
            comment=comment,
            since=now - RESEND_LOOKBACK_SECONDS,
        )
    if found is not None:
        return CommandRef(
            step=step,
            document=document,
            plugins=list(plugins),
            command_id=str(found["CommandId"]),
            instance_id=instance_id,
            sent_at=min(now, _timestamp(found.get("RequestedDateTime")) or now),
            first_sent_at=first,
            deadline=deadline,
            attempt=attempt,
        )
    kwargs: dict[str, Any] = {
        "InstanceIds": [instance_id],
        "DocumentName": document,
        "Parameters": {name: [value] for name, value in parameters.items()},
        "TimeoutSeconds": max(30, min(timeout_seconds, 2592000)),
        "Comment": comment,
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
    return CommandRef(
        step=step,
        document=document,
        plugins=list(plugins),
        command_id=command["CommandId"],
        instance_id=instance_id,
        sent_at=now,
        first_sent_at=first,
        deadline=deadline,
        attempt=attempt,
    )


def next_wait(ref: CommandRef, *, now: float, interval: int) -> int:
    """Seconds of the Wait before the next poll (or resend): the back-off, never far past the deadline."""
    elapsed = max(0.0, now - ref.first_sent_at)
    seconds = min(max(interval, MAX_WAIT_SECONDS), max(interval, int(elapsed * BACKOFF_FRACTION)))
    remaining = math.ceil(ref.deadline - now)
    return max(1, min(seconds, max(interval, remaining)))


# An Await round that would end at the deadline ends this much after it: the agent's own
# executionTimeout (and its event) comes first; the round's read then sees it ended.
AWAIT_GRACE_SECONDS = 5
# A command's safety net runs at most this many rounds: a long budget gets longer rounds, so a
# step's history stays bounded whatever the configured interval (local/limits.py).
MAX_AWAIT_ROUNDS = 60


def await_timeout(ref: CommandRef, *, now: float, safety_net: int) -> int:
    """Seconds one Await round waits for the command's status-change event before it reads the
    invocation itself: the safety net (longer for a budget of more than MAX_AWAIT_ROUNDS of
    them), or until just past the deadline when that comes first."""
    round_seconds = max(safety_net, math.ceil((ref.deadline - ref.first_sent_at) / MAX_AWAIT_ROUNDS))
    remaining = math.ceil(ref.deadline - now) + AWAIT_GRACE_SECONDS
    return max(1, min(round_seconds, remaining))


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


timestamp_of = _timestamp  # an ISO 8601 time (e.g. the execution's start) as epoch seconds


TERMINAL_FAILURES = ("Failed", "TimedOut", "Cancelled", "Cancelling", "Undeliverable", "Terminated")


def poll(ssm: Any, ref: CommandRef, *, now: float, error: type[DeployError]) -> CommandRef:
    """Read the invocation once. Ended well: status Success with its result. Still running:
    InProgress (or `error` once the deadline passed, after cancelling it). Ended badly: `error`."""
    invocation = _invocation(ssm, ref, ref.plugins[-1] if ref.plugins else None)
    status = invocation.get("Status", "Pending")
    stdout = invocation.get("StandardOutputContent", "") or ""
    stderr = invocation.get("StandardErrorContent", "") or ""
    # no output in the state: a finished command keeps its result line only
    updated = ref.model_copy(update={"ssm_status": status})
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
            budget = int(ref.deadline - ref.first_sent_at)
            raise error(
                f"{ref.document} did not finish within its step budget of {budget} s on {ref.instance_id} "
                f"(still {status} after {waited} s; cancelled)"
            )
        return updated.model_copy(update={"status": "InProgress"})

    if output_truncated(stdout):
        raise error(
            f"{ref.document} on {ref.instance_id}: output truncated by SSM at {STDOUT_LIMIT:,} characters: "
            "the result line is lost"
        )
    result = last_json_line(stdout)
    details = invocation.get("StatusDetails", status)
    if details in ("DeliveryTimedOut", "Undeliverable", "Terminated"):
        # never ran: every step reads so, and the instance is the cause, not a step
        raise InstanceUnavailable(f"{ref.document}: instance {ref.instance_id} did not answer ({details})")
    if len(ref.plugins) > 1:
        _raise_for_earlier_plugins(ssm, ref, error)
    finished_at = _timestamp(invocation.get("ExecutionEndDateTime")) or now
    updated = updated.model_copy(update={"result": result, "finished_at": finished_at, "seen_at": now})
    if status == "Success":
        return updated.model_copy(update={"status": "Success"})
    reason = (result or {}).get("error") or (stderr.strip().splitlines() or [details])[-1]
    tails = _tails(stdout if result is None else "", stderr)
    if status == "TimedOut":
        # exit 137: the agent's executionTimeout SIGKILLed the script (or SIGKILL from elsewhere, e.g. OOM)
        raise error(
            f"{ref.document} timed out on {ref.instance_id}: the SSM agent killed it at its executionTimeout "
            f"(exit 137); last output: {reason}{tails}"
        )
    raise error(f"{ref.document} {status.lower()} on {ref.instance_id}: {reason}{tails}")


def _invocation(ssm: Any, ref: CommandRef, plugin: str | None) -> dict[str, Any]:
    kwargs = {"CommandId": ref.command_id, "InstanceId": ref.instance_id}
    if plugin is not None:
        kwargs["PluginName"] = plugin
    try:
        return dict(ssm.get_command_invocation(**kwargs))
    except ClientError as client_error:
        _raise_transient(client_error)
        raise


def _raise_for_earlier_plugins(ssm: Any, ref: CommandRef, error: type[DeployError]) -> None:
    """A step before the script (a download of what a fresh image lacks) that did not succeed
    is the command's failure, whatever the script step then reports."""
    for plugin in ref.plugins[:-1]:
        invocation = _invocation(ssm, ref, plugin)
        status = invocation.get("Status", "")
        if status == "Success":
            continue
        stderr = str(invocation.get("StandardErrorContent", "") or "").strip()
        reason = (stderr.splitlines() or [str(invocation.get("StatusDetails", status))])[-1]
        raise error(f"{ref.document} {str(status).lower()} on {ref.instance_id} at step {plugin}: {reason}")


def output_truncated(stdout: str) -> bool:
    """The agent cut stdout: whatever JSON line is left is not the script's last one."""
    return stdout.endswith(TRUNCATED_SUFFIX) or stdout.endswith(TRUNCATED_MARKER)


PROGRESS_PREFIX = '{"progress"'  # a long step's progress lines on stderr (the sync's)


def _tails(stdout: str, stderr: str) -> str:
    """The end of a failed command's output, for the failure's cause (never kept in the state);
    progress lines say nothing about the failure and are left out."""
    stderr = "\n".join(line for line in stderr.splitlines() if not line.startswith(PROGRESS_PREFIX))
    parts = [
        f"\n--- {name} (last {FAILURE_TAIL} characters) ---\n{text.strip()[-FAILURE_TAIL:]}"
        for name, text in (("stderr", stderr), ("stdout", stdout))
        if text.strip()
    ]
    return "".join(parts)


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
