"""The execution state the state machine carries, and the events each handler receives.

Step Functions passes JSON; every handler parses its event into one of these models first
(`parse_event`), so a malformed event is an `InvalidInput` naming the field, never a
KeyError deep inside a step. Keys the machine adds that a handler does not read are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools.utilities.parser import parse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.contracts import DeployRequest, describe_validation_error
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.planner import Plan


class Failure(BaseModel):
    """What a Catch puts at its result path: the error's name and its cause."""

    model_config = ConfigDict(extra="ignore")

    Error: str = "DeploymentFailed"
    Cause: str = ""


# What a parallel group's step that its run_if skipped leaves at $.steps.<key>
# (stacks/state_machine.py): {"skipped": true}, read as a step that did not run.
SKIPPED = "skipped"


class ExecutionState(BaseModel):
    """$ of one execution, from ValidateInput on."""

    model_config = ConfigDict(extra="ignore")

    request: DeployRequest
    instance_id: str
    instance: dict[str, Any] | None = None  # ec2 DescribeInstances summary
    model_source: dict[str, Any] | None = None  # what ValidateInput found in the bucket
    execution: str | None = None  # the execution's ARN (the lock's holder)
    execution_name: str | None = None  # the log correlation id
    started_at: str | None = None
    steps: dict[str, CommandRef] = Field(default_factory=dict)  # step key -> its finished command
    plan: Plan | None = None
    command: CommandRef | None = None  # the instance step in flight
    failure: Failure | None = None
    rollback_error: Failure | None = None
    benchmark_failure: Failure | None = None  # the benchmark's Catch (the deployment stands)
    restore_flux: bool = False  # undeploy only
    # undeploy only: the runtime unit removed (a resident model's; None: the primary's)
    undeploy_unit: str | None = None
    wake: dict[str, Any] | None = None  # wake-instance's progress (core/wake.py WakeProgress)

    @field_validator("steps", mode="before")
    @classmethod
    def _only_steps_that_ran(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if not (isinstance(v, dict) and v.get(SKIPPED) is True)}
        return value

    def result(self, key: str) -> dict[str, Any] | None:
        """The JSON result line of a finished step, by its key."""
        step = self.steps.get(key)
        return step.result if step is not None else None


# --- the events of each handler, told apart by `action` --------------------------------------
class SendEvent(BaseModel):
    action: Literal["send"]
    state: ExecutionState


class PollEvent(BaseModel):
    action: Literal["poll"]
    command: CommandRef


class AwaitEvent(BaseModel):
    """Wait for the command's end: keep the task token, then read the invocation once."""

    action: Literal["await"]
    command: CommandRef
    token: str = Field(min_length=1, max_length=4096)


class ExplainEvent(BaseModel):
    """Rollback: compose the failure's cause after the rollback ran (or failed)."""

    action: Literal["explain"]
    state: ExecutionState


class ReportEvent(BaseModel):
    """CheckInstance: publish metrics of a finished check; fail when a check failed."""

    action: Literal["report"]
    state: ExecutionState


class ReportFailureEvent(BaseModel):
    """CheckInstance: the check itself failed (e.g. the agent is offline)."""

    action: Literal["report_failure"]
    state: ExecutionState


class IdleEvent(BaseModel):
    """CheckInstance: after a passed check, the request activity and the idle policy (core/idle.py)."""

    action: Literal["idle"]
    state: ExecutionState


class StoppedEvent(BaseModel):
    """CheckInstance: the instance is stopped; report it instead of checking it."""

    action: Literal["stopped"]
    state: ExecutionState


class WakeEvent(BaseModel):
    """WakeInstance: start the instance if stopped; say whether it runs and is Online in SSM."""

    action: Literal["wake"]
    state: ExecutionState


class AcquireEvent(BaseModel):
    action: Literal["acquire"]
    state: ExecutionState


class ReleaseEvent(BaseModel):
    action: Literal["release"]
    state: ExecutionState


class RecordEvent(BaseModel):
    action: Literal["record"]
    outcome: Literal["succeeded", "failed"]
    state: ExecutionState


class ValidateInputEvent(BaseModel):
    """The first state: the raw execution input and the execution's context."""

    model_config = ConfigDict(extra="ignore")

    input: Any = None
    execution: str | None = None
    execution_name: str | None = None
    started_at: str | None = None


class PlanEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request: DeployRequest
    snapshot: dict[str, Any]
    instance_id: str | None = None
    execution_name: str | None = None
    # the execution's start (ISO 8601): the plan's time_to_healthy counts what went before it
    started_at: str | None = None


InstanceStepEvent = Annotated[SendEvent | PollEvent | AwaitEvent, Field(discriminator="action")]
RollbackEvent = Annotated[SendEvent | PollEvent | AwaitEvent | ExplainEvent, Field(discriminator="action")]
CheckInstanceEvent = Annotated[
    SendEvent | PollEvent | AwaitEvent | ReportEvent | ReportFailureEvent | IdleEvent | StoppedEvent,
    Field(discriminator="action"),
]
LockEvent = Annotated[AcquireEvent | ReleaseEvent, Field(discriminator="action")]


def parse_event(model: Any, event: object, *, what: str) -> Any:
    """`event` as `model` (a model or an annotated union), or InvalidInput naming the field."""
    if not isinstance(event, dict):
        raise InvalidInput(f"{what}: must be a JSON object, got {type(event).__name__}")
    try:
        return parse(event=event, model=model)
    except ValidationError as error:
        raise InvalidInput(f"{what}: {describe_validation_error(error)}") from None
