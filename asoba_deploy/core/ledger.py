"""The deployment ledger: one record per execution (deploy, dry run or failure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.state import ExecutionState

# On-demand list prices (USD per hour, us-east-1); other types are reported as unknown.
ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.8xlarge": 2.448,
    "g5.12xlarge": 5.672,
    "g6.xlarge": 0.805,
    "g6.4xlarge": 1.323,
    "g6e.xlarge": 1.861,
}


class StepTiming(BaseModel):
    seconds: float | None  # first send -> the state machine saw it end
    command_seconds: float | None  # the last command's own run time
    lag_seconds: float | None = None  # the command ended -> the state machine saw it
    attempts: int = 1


class LedgerRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    instance_id: str
    record_key: str
    execution: str
    model: str | None
    deploy_model: str | None = None
    dry_run: bool
    outcome: Literal["succeeded", "failed", "planned", "undeployed"]
    started_at: str
    finished_at: str
    instance_type: str
    cost_per_hour_usd: float | None
    action: str | None = None
    quantization: str | None = None
    port: int | None = None
    endpoints: dict[str, str] = {}
    previous: dict[str, Any] | None = None
    steps: dict[str, StepTiming] = {}
    results: dict[str, Any] = {}
    plan: dict[str, Any] | None = None
    error: str | None = None
    cause: str | None = None


def _timing(command: CommandRef) -> StepTiming:
    first, seen = command.first_sent_at, command.seen_at
    sent, finished = command.sent_at, command.finished_at
    return StepTiming(
        seconds=round(seen - first, 3) if seen is not None else None,
        command_seconds=round(finished - sent, 3) if finished is not None else None,
        lag_seconds=round(seen - finished, 3) if seen is not None and finished is not None else None,
        attempts=command.attempt,
    )


def build_record(
    state: ExecutionState, outcome: Literal["succeeded", "failed"], *, instance_type: str, now: datetime
) -> LedgerRecord:
    request, plan = state.request, state.plan
    dry_run = request.dry_run
    started = state.started_at or now.isoformat()
    execution = state.execution or ""
    return LedgerRecord(
        instance_id=state.instance_id,
        record_key=f"{started}#{execution.rsplit(':', 1)[-1]}",
        execution=execution,
        model=request.model,
        deploy_model=plan.deploy_model if plan else None,
        dry_run=dry_run,
        outcome="planned" if outcome == "succeeded" and dry_run else outcome,
        started_at=started,
        finished_at=now.isoformat(),
        instance_type=instance_type,
        cost_per_hour_usd=ON_DEMAND_USD_PER_HOUR.get(instance_type),
        action=plan.action if plan else None,
        quantization=str(plan.quantization) if plan else None,
        port=plan.port if plan else None,
        endpoints=plan.endpoints.model_dump() if plan else {},
        previous=state.result("snapshot_previous"),
        steps={key: _timing(command) for key, command in state.steps.items()},
        results={key: command.result for key, command in state.steps.items()},
        plan=plan.model_dump(mode="json") if plan else None,
        error=state.failure.Error if state.failure else None,
        cause=state.failure.Cause if state.failure else None,
    )


def undeploy_record(
    instance_id: str, *, instance_type: str, now: datetime, command_id: str, result: dict[str, Any]
) -> LedgerRecord:
    """An undeploy ends what the last deployment started: `status` reads it as "nothing deployed"."""
    stamp = now.isoformat()
    return LedgerRecord(
        instance_id=instance_id,
        record_key=f"{stamp}#undeploy-{command_id}",
        execution=f"ssm:{command_id}",
        model=None,
        dry_run=False,
        outcome="undeployed",
        started_at=stamp,
        finished_at=stamp,
        instance_type=instance_type,
        cost_per_hour_usd=ON_DEMAND_USD_PER_HOUR.get(instance_type),
        results={"undeploy": result},
    )


def current_deployment(records: list[LedgerRecord]) -> LedgerRecord | None:
    """The deployment in place, from records newest first: the last success not undeployed since."""
    for record in records:
        if record.outcome == "undeployed":
            return None
        if record.outcome == "succeeded" and not record.dry_run:
            return record
    return None


def put(dynamodb: Any, table: str, record: LedgerRecord) -> None:
    dynamodb.put_item(
        TableName=table,
        Item={
            "instance_id": {"S": record.instance_id},
            "record_key": {"S": record.record_key},
            "model": {"S": record.model or ""},
            "outcome": {"S": record.outcome},
            "record": {"S": record.model_dump_json()},
        },
    )


def recent(dynamodb: Any, table: str, instance_id: str, limit: int = 20) -> list[LedgerRecord]:
    """Newest first."""
    response = dynamodb.query(
        TableName=table,
        KeyConditionExpression="instance_id = :id",
        ExpressionAttributeValues={":id": {"S": instance_id}},
        ScanIndexForward=False,
        Limit=limit,
    )
    return [
        LedgerRecord.model_validate(json.loads(item["record"]["S"])) for item in response.get("Items", [])
    ]


def utcnow() -> datetime:
    return datetime.now(UTC)
