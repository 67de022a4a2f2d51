"""Event-driven completion of an instance step: the task token, the SSM event, the safety net.

An instance step's `<Step>.Await` state is a `lambda:invoke.waitForTaskToken` task. Its Lambda
(`await_command`) keeps the token in the token table under the invocation's key (command id +
instance id), THEN reads the invocation once: a command that already ended is completed there
(so one that ended before its token was stored still completes). Otherwise SSM's
"EC2 Command Invocation Status-change Notification" event reaches the completer
(`on_status_event`), which reads the invocation the same way and completes the token. A lost
event is covered by the Await's timeout: the machine enters Await again, which reads again.

Exactly one completer wins: whoever deletes the token item (conditionally, on the token it
read) sends SendTaskSuccess/SendTaskFailure; the other finds nothing to do. The outcome is the
step's poll: success carries the same command object `poll` returns, failure the typed error's
class name and message, so the machine's Retry/Catch on error names work as before.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asoba_deploy.core.commands import CommandRef, InvocationDoesNotExist, ThrottlingException
from asoba_deploy.core.errors import DeployError
from asoba_deploy.core.settings import Settings
from asoba_deploy.core.steps import Step, by_key

DETAIL_TYPE = "EC2 Command Invocation Status-change Notification"
SOURCE = "aws.ssm"
# The invocation statuses after which nothing changes (the rule's filter: it routes only these).
TERMINAL_STATUSES = ("Success", "Failed", "TimedOut", "Cancelled", "Undeliverable", "Terminated")
# A token item outlives its command's deadline by this much; DynamoDB's TTL then removes it.
TOKEN_TTL_MARGIN_SECONDS = 86_400
# SendTaskFailure's limits (Step Functions API reference: error 256, cause 32,768 characters).
ERROR_LIMIT = 256
CAUSE_LIMIT = 32_768
# What SendTask* answers for a token no longer waited on: a round that timed out, an ended execution.
STALE_TOKEN_ERRORS = ("TaskTimedOut", "TaskDoesNotExist", "InvalidToken")


class InvocationNotEnded(Exception):
    """The event says the command ended but GetCommandInvocation does not show it yet: the
    completer fails, so Lambda's own retry of an asynchronous invocation reads again (minutes,
    not a whole safety-net round)."""


def invocation_key(command_id: str, instance_id: str) -> str:
    """The token item's key: one invocation, so two instances' events never meet."""
    return f"{command_id}/{instance_id}"


@dataclass(frozen=True)
class Outcome:
    """How a step ended: `output` (the finished command) or `error` with its `cause`."""

    output: dict[str, Any] | None = None
    error: str | None = None
    cause: str = ""


class StatusDetail(BaseModel):
    """The event's detail (the fields SSM sends; others ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    command_id: str = Field(alias="command-id", min_length=1)
    instance_id: str = Field(alias="instance-id", min_length=1)
    status: str
    document_name: str = Field(default="", alias="document-name")


class StatusEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    source: Literal["aws.ssm"]
    detail_type: Literal["EC2 Command Invocation Status-change Notification"] = Field(alias="detail-type")
    detail: StatusDetail


Verdict = Literal["waiting", "completed", "taken", "ignored", "unknown", "not-ended"]


def poll_outcome(step: Step, config: Settings, ssm: Any, command: CommandRef, now: float) -> Outcome | None:
    """Read the invocation once with the step's own poll: None while the command runs. Transient
    SSM errors (not registered yet, throttled) propagate: the caller's retry reads again."""
    from asoba_deploy.core.instance_step import poll_step  # the step logic imports this module

    try:
        ref = poll_step(step, config, ssm, command, now)
    except (InvocationDoesNotExist, ThrottlingException):
        raise
    except DeployError as error:
        return Outcome(error=type(error).__name__[:ERROR_LIMIT], cause=str(error)[:CAUSE_LIMIT])
    if ref.status == "InProgress":
        return None
    return Outcome(output=ref.model_dump(mode="json"))


@dataclass(frozen=True)
class TokenTable:
    """The token table (a DynamoDB client and the table's name): invocation key -> token item."""

    dynamodb: Any
    name: str

    def put(self, command: CommandRef, token: str, now: float) -> None:
        expires_at = math.ceil(max(now, command.deadline)) + TOKEN_TTL_MARGIN_SECONDS
        self.dynamodb.put_item(
            TableName=self.name,
            Item={
                "invocation": {"S": invocation_key(command.command_id, command.instance_id)},
                "token": {"S": token},
                "command": {"S": command.model_dump_json()},
                "expires_at": {"N": str(expires_at)},
            },
        )

    def get(self, key: str) -> tuple[str, CommandRef] | None:
        item = self.dynamodb.get_item(
            TableName=self.name, Key={"invocation": {"S": key}}, ConsistentRead=True
        ).get("Item")
        if item is None:
            return None
        return item["token"]["S"], CommandRef.model_validate_json(item["command"]["S"])

    def claim(self, key: str, token: str) -> bool:
        """Delete the item if it still holds `token`: True for the one caller that did."""
        try:
            self.dynamodb.delete_item(
                TableName=self.name,
                Key={"invocation": {"S": key}},
                ConditionExpression="#token = :token",
                ExpressionAttributeNames={"#token": "token"},
                ExpressionAttributeValues={":token": {"S": token}},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True


def complete(sfn: Any, table: TokenTable, key: str, token: str, outcome: Outcome) -> bool:
    """Complete the token with `outcome` if this caller wins it; False when another did first."""
    if not table.claim(key, token):
        return False
    try:
        if outcome.output is not None:
            sfn.send_task_success(taskToken=token, output=json.dumps(outcome.output))
        else:
            sfn.send_task_failure(taskToken=token, error=outcome.error or "", cause=outcome.cause)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in STALE_TOKEN_ERRORS:
            return False  # that round already timed out: the next one reads and completes
        raise
    return True


def await_command(
    step: Step,
    config: Settings,
    ssm: Any,
    table: TokenTable,
    sfn: Any,
    command: CommandRef,
    token: str,
    now: float,
) -> Verdict:
    """The Await round: store the token first, then read once (a command that ended before the
    token was stored, or whose event was lost, completes here)."""
    table.put(command, token, now)
    outcome = poll_outcome(step, config, ssm, command, now)
    if outcome is None:
        return "waiting"
    key = invocation_key(command.command_id, command.instance_id)
    return "completed" if complete(sfn, table, key, token, outcome) else "taken"


def parse_status_event(event: object) -> StatusDetail | None:
    """The event's detail, or None for anything that is not an SSM invocation status change."""
    try:
        return StatusEvent.model_validate(event).detail
    except ValidationError:
        return None


def on_status_event(
    event: object, config: Settings, ssm: Any, table: TokenTable, sfn: Any, now: float
) -> Verdict:
    """The completer: an invocation ended, so the step waiting on it (if any) ends too."""
    detail = parse_status_event(event)
    if detail is None or detail.status not in TERMINAL_STATUSES:
        return "ignored"
    key = invocation_key(detail.command_id, detail.instance_id)
    found = table.get(key)
    if found is None:
        return "unknown"  # not a step's command, or already completed
    token, command = found
    if (command.command_id, command.instance_id) != (detail.command_id, detail.instance_id):
        return "unknown"
    outcome = poll_outcome(by_key(command.step), config, ssm, command, now)
    if outcome is None:
        return "not-ended"  # the read lags the event: the Await's next round reads again
    return "completed" if complete(sfn, table, key, token, outcome) else "taken"
