"""A fleet rollout: one execution deploys a model to several instances (issue 16).

The state machine's Map "Rollout" runs the one per-instance deployment for each target, at most
`max_concurrency` at a time. Before an instance starts, its iteration asks `admit` whether the
rollout's failures have passed the tolerance (a counter item in the lock table, keyed by the
execution, since Map iterations share nothing else); a failed iteration is caught and counted
(`count_failure`), so the Map itself goes on and the iterations still waiting are refused.
Each iteration returns one small row (`InstanceRow`); `summarize` makes the execution's table.
With `rollback_on_failure`, a failed rollout puts each instance it left on the new model back
(`undone_row`, and a `rolled-back` ledger record that `ledger.current_deployment` reads).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from asoba_deploy.core.errors import InvalidInput

# Tag keys and values as EC2 allows them (128 / 256 characters), without control characters.
TAG_KEY_PATTERN = r"^[^\x00-\x1f]{1,128}$"
TAG_VALUE_PATTERN = r"^[^\x00-\x1f]{0,256}$"
PERCENT = re.compile(r"^(100|[1-9]?[0-9])%$")

# The most instances one execution takes. Every iteration of an inline Map writes its events into
# the execution's history (25,000 events, local/limits.py). A deployment's worst case at the
# default 900 s safety net is ~1,000 events (every SSM event lost, each step to its budget;
# tests/unit/test_history_worst_case.py), so 24 instances fit even then; a larger fleet is
# rolled out in batches (README, Fleets).
MAX_FLEET = 24
MAX_CONCURRENCY = 40  # an inline Map runs at most 40 iterations at once on AWS
CAUSE_CHARACTERS = 400  # a row's cause is cut here: the Map's result stays small (256 KiB)

# the counter item's key in the lock table: never an instance id (no '#' in those)
COUNTER_PREFIX = "rollout#"
COUNTER_TTL_SECONDS = 5 * 3600  # the state machine times out after 4 h


class InstanceTag(BaseModel):
    """`instance_tag`: the stack's instances carrying this tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Annotated[str, Field(pattern=TAG_KEY_PATTERN)]
    value: Annotated[str, Field(pattern=TAG_VALUE_PATTERN)]


def check_tolerated_failures(value: int | str) -> int | str:
    """A count (0 or more) or a percent of the fleet ("25%")."""
    if isinstance(value, bool):
        raise ValueError("must be a count or a percent such as '25%'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must be 0 or more")
        return value
    if not PERCENT.fullmatch(value):
        raise ValueError("must be a count or a percent from '0%' to '100%'")
    return value


def tolerated_count(tolerated: int | str, size: int) -> int:
    """How many instances may fail before the rollout stops: a percent rounds down."""
    if isinstance(tolerated, int):
        return tolerated
    return math.floor(int(tolerated.rstrip("%")) * size / 100)


def check_instance_list(instances: list[str]) -> list[str]:
    if not instances:
        raise ValueError("must name at least one instance")
    repeated = sorted({i for i in instances if instances.count(i) > 1})
    if repeated:
        raise ValueError(f"names {', '.join(repeated)} more than once")
    if len(instances) > MAX_FLEET:
        raise ValueError(f"at most {MAX_FLEET} instances per execution, got {len(instances)}")
    return instances


class Target(BaseModel):
    """One Map item: the instance and its DescribeInstances summary."""

    instance_id: str
    instance: dict[str, Any]


class Rollout(BaseModel):
    """$.rollout of a fleet execution (absent for a single `instance_id`)."""

    model_config = ConfigDict(extra="forbid")

    fleet: bool  # false: a single instance_id, a one-item Map whose output is that item's own
    size: int
    max_concurrency: int
    tolerated: int  # the resolved count
    rollback_on_failure: bool = False


class TargetError(BaseModel):
    instance_id: str
    error: str


def resolve_tagged(ec2: Any, tag: InstanceTag, configured: Sequence[str]) -> list[str]:
    """The stack's instances carrying the tag, in the stack's order (DescribeInstances with a tag
    filter, restricted to the stack's own ids)."""
    found: set[str] = set()
    paginator = ec2.get_paginator("describe_instances")
    filters = [{"Name": f"tag:{tag.key}", "Values": [tag.value]}]
    try:
        for page in paginator.paginate(InstanceIds=list(configured), Filters=filters):
            for reservation in page.get("Reservations", []):
                found.update(i["InstanceId"] for i in reservation.get("Instances", []))
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise InvalidInput(f"instance_tag: cannot list the stack's instances ({code})") from None
    targets = [i for i in configured if i in found]
    if not targets:
        raise InvalidInput(
            f"instance_tag: none of the stack's instances ({', '.join(configured)}) "
            f"carries the tag {tag.key}={tag.value}"
        )
    return targets


def check_in_stack(instances: Sequence[str], configured: Sequence[str]) -> None:
    outside = [i for i in instances if i not in configured]
    if outside:
        raise InvalidInput(
            f"instances: {', '.join(outside)} not among the instances this stack manages "
            f"({', '.join(configured)})"
        )


def plan_rollout(
    size: int, max_concurrency: int, tolerated_failures: int | str, rollback_on_failure: bool, *, fleet: bool
) -> Rollout:
    return Rollout(
        fleet=fleet,
        size=size,
        max_concurrency=min(max_concurrency, size),
        tolerated=tolerated_count(tolerated_failures, size),
        rollback_on_failure=rollback_on_failure,
    )


# --- the failure counter ---------------------------------------------------------------------
def _counter_key(execution: str) -> dict[str, Any]:
    return {"instance_id": {"S": COUNTER_PREFIX + execution.rsplit(":", 1)[-1]}}


def failures_so_far(dynamodb: Any, table: str, execution: str) -> int:
    item = dynamodb.get_item(TableName=table, Key=_counter_key(execution), ConsistentRead=True).get("Item")
    return int(item["failures"]["N"]) if item else 0


def count_failure(dynamodb: Any, table: str, execution: str, *, now: float) -> int:
    """One more failed instance; returns the rollout's failures so far (atomic: concurrent
    iterations count each failure once)."""
    answer = dynamodb.update_item(
        TableName=table,
        Key=_counter_key(execution),
        UpdateExpression="ADD failures :one SET expires_at = :expires",
        ExpressionAttributeValues={
            ":one": {"N": "1"},
            ":expires": {"N": str(int(now + COUNTER_TTL_SECONDS))},
        },
        ReturnValues="UPDATED_NEW",
    )
    return int(answer["Attributes"]["failures"]["N"])


def admitted(failures: int, rollout: Rollout) -> bool:
    """An instance starts while the failures so far have not passed the tolerance."""
    return failures <= rollout.tolerated


# --- rows and the table ----------------------------------------------------------------------
# rolled-back / rollback-failed: a succeeded instance after the failed rollout's rollback_on_failure
Outcome = Literal["succeeded", "planned", "failed", "not-started", "rolled-back", "rollback-failed"]


class PlanSummary(BaseModel):
    fits: bool | None = None
    action: str | None = None
    quantization: str | None = None
    summary: str | None = None


class InstanceRow(BaseModel):
    """One instance's line of the rollout table (small: the Map's result holds one per instance)."""

    instance_id: str
    outcome: Outcome
    plan: PlanSummary | None = None
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None
    steps: dict[str, float | None] = {}  # step key -> seconds
    endpoints: dict[str, str] = {}
    error: str | None = None
    cause: str | None = None


def _seconds(started: str | None, finished: str | None) -> float | None:
    if not started or not finished:
        return None
    try:
        return round((datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds(), 3)
    except ValueError:
        return None


def _plan_summary(plan: dict[str, Any] | None) -> PlanSummary | None:
    if not plan:
        return None
    return PlanSummary(
        fits=plan.get("fits"),
        action=plan.get("action"),
        quantization=None if plan.get("quantization") is None else str(plan.get("quantization")),
        summary=plan.get("summary"),
    )


def done_row(instance_id: str, dry_run: bool, value: dict[str, Any]) -> InstanceRow:
    """The row of an iteration that ended well: its ledger record, or for a dry run its plan."""
    if dry_run:
        return InstanceRow(instance_id=instance_id, outcome="planned", plan=_plan_summary(value))
    steps = {key: timing.get("seconds") for key, timing in (value.get("steps") or {}).items()}
    return InstanceRow(
        instance_id=instance_id,
        outcome="succeeded",
        plan=_plan_summary(value.get("plan")),
        started_at=value.get("started_at"),
        finished_at=value.get("finished_at"),
        seconds=_seconds(value.get("started_at"), value.get("finished_at")),
        steps=steps,
        endpoints=value.get("endpoints") or {},
    )


def failed_row(
    instance_id: str,
    error: str | None,
    cause: str | None,
    plan: dict[str, Any] | None,
    started_at: str | None,
    now: datetime,
) -> InstanceRow:
    finished = now.isoformat()
    return InstanceRow(
        instance_id=instance_id,
        outcome="failed",
        plan=_plan_summary(plan),
        started_at=started_at,
        finished_at=finished,
        seconds=_seconds(started_at, finished),
        error=error,
        cause=None if cause is None else cause[:CAUSE_CHARACTERS],
    )


def not_started_row(instance_id: str, failures: int, rollout: Rollout) -> InstanceRow:
    return InstanceRow(
        instance_id=instance_id,
        outcome="not-started",
        cause=f"not started: {failures} instance(s) failed, {rollout.tolerated} tolerated",
    )


class RolloutSummary(BaseModel):
    """The execution's output (and, when the rollout failed, its cause)."""

    outcome: Literal["succeeded", "failed"]
    dry_run: bool
    instances: int
    counts: dict[str, int]
    tolerated_failures: int
    max_concurrency: int
    rows: list[InstanceRow]
    cause: str  # one line per instance

    @field_validator("counts")
    @classmethod
    def _counts(cls, value: dict[str, int]) -> dict[str, int]:
        return dict(sorted(value.items()))


def summarize(rows: list[InstanceRow], rollout: Rollout, dry_run: bool) -> RolloutSummary:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
    failed = counts.get("failed", 0)
    outcome: Literal["succeeded", "failed"] = "failed" if failed > rollout.tolerated else "succeeded"
    lines = [
        f"rollout {outcome}: "
        + ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        + f" ({rollout.tolerated} failure(s) tolerated)"
    ]
    for row in rows:
        detail = row.error or (row.plan.summary if row.plan and row.plan.summary else "")
        lines.append(f"{row.instance_id}: {row.outcome}" + (f" ({detail})" if detail else ""))
    return RolloutSummary(
        outcome=outcome,
        dry_run=dry_run,
        instances=len(rows),
        counts=counts,
        tolerated_failures=rollout.tolerated,
        max_concurrency=rollout.max_concurrency,
        rows=rows,
        cause="\n".join(lines)[:32768],
    )


def fleet_instances(
    ec2: Any, instances: list[str] | None, tag: InstanceTag | None, configured: Sequence[str]
) -> list[str]:
    """The rollout's instances: the ones named (each must be the stack's), or those tagged."""
    if instances is not None:
        check_in_stack(instances, configured)
        return list(instances)
    assert tag is not None
    return resolve_tagged(ec2, tag, configured)


# --- the events of the rollout step, told apart by `action` -----------------------------------
class AdmitEvent(BaseModel):
    action: Literal["admit"]
    execution: str
    instance_id: str
    rollout: Rollout


class DoneEvent(BaseModel):
    action: Literal["done"]
    instance_id: str
    dry_run: bool
    value: dict[str, Any]  # the ledger record, or for a dry run the plan


class FailedEvent(BaseModel):
    action: Literal["failed"]
    execution: str
    instance_id: str
    started_at: str | None = None
    failure: dict[str, Any]  # the Catch's {"Error", "Cause"}


class SummarizeEvent(BaseModel):
    action: Literal["summarize"]
    dry_run: bool
    rollout: Rollout
    rows: list[InstanceRow]


class UndoneEvent(BaseModel):
    """A succeeded instance of a failed rollout, after its rollback (rollback_on_failure)."""

    action: Literal["undone"]
    execution: str
    model: str | None = None
    row: InstanceRow
    failure: dict[str, Any] | None = None  # the rollback's {"Error", "Cause"} when it failed


RolloutEvent = Annotated[
    AdmitEvent | DoneEvent | FailedEvent | SummarizeEvent | UndoneEvent, Field(discriminator="action")
]


def undone_row(row: InstanceRow, failure: dict[str, Any] | None) -> InstanceRow:
    if failure is None:
        return row.model_copy(update={"outcome": "rolled-back", "endpoints": {}})
    cause = failure.get("Cause")
    return row.model_copy(
        update={
            "outcome": "rollback-failed",
            "error": failure.get("Error"),
            "cause": None if cause is None else str(cause)[:CAUSE_CHARACTERS],
        }
    )


def rolled_back_record(
    row: InstanceRow, execution: str, model: str | None, *, instance_type: str, now: datetime
) -> Any:
    """The ledger's record of an instance put back by rollback_on_failure: `status` then reads the
    deployment before this execution's as the one in place (ledger.current_deployment)."""
    from asoba_deploy.core.ledger import ON_DEMAND_USD_PER_HOUR, LedgerRecord  # ledger -> contracts -> here

    stamp = now.isoformat()
    return LedgerRecord(
        instance_id=row.instance_id,
        record_key=f"{stamp}#{execution.rsplit(':', 1)[-1]}#rolled-back",
        execution=execution,
        model=model,
        dry_run=False,
        outcome="rolled-back",
        started_at=row.started_at or stamp,
        finished_at=stamp,
        instance_type=instance_type,
        cost_per_hour_usd=ON_DEMAND_USD_PER_HOUR.get(instance_type),
        cause="the rollout failed; rollback_on_failure restored what ran before",
    )
