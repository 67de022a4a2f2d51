"""The deployment ledger: one record per execution (deploy, dry run or failure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from asoba_deploy.core import cost
from asoba_deploy.core.benchmark import BenchmarkResult, from_state
from asoba_deploy.core.benchmark import from_result as benchmark_from_result
from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.state import ExecutionState

# On-demand list prices: the table lives with the cost arithmetic (core.cost).
ON_DEMAND_USD_PER_HOUR = cost.ON_DEMAND_USD_PER_HOUR


class StepTiming(BaseModel):
    seconds: float | None  # first send -> the state machine saw it end
    command_seconds: float | None  # the last command's own run time
    lag_seconds: float | None = None  # the command ended -> the state machine saw it
    attempts: int = 1


# The plan's estimate is good when the measured time is within this share of it (make demo says).
ESTIMATE_TOLERANCE = 0.3


class TimeToHealthy(BaseModel):
    """The plan's prediction beside what this execution measured. The parts come from the
    commands' own timings (SSM's end of each command): transfer_s the sync command, install_s
    the install command, load_s from start-service's end (the unit restarted) to the health
    check's (it saw healthy); actual_s from the execution's start to the health check's end."""

    estimate_s: float | None = None  # $.plan.time_to_healthy.estimate_s (null: no estimate)
    actual_s: float | None = None
    transfer_s: float | None = None
    install_s: float | None = None
    load_s: float | None = None
    # the plan's own parts, for the comparison (transfer_s, install_s, load_s, warmup_s)
    estimated_parts: dict[str, float] = {}

    @property
    def ratio(self) -> float | None:
        """actual / estimate, when both are known."""
        if self.estimate_s is None or self.actual_s is None or self.estimate_s <= 0:
            return None
        return self.actual_s / self.estimate_s

    def within(self, tolerance: float = ESTIMATE_TOLERANCE) -> bool | None:
        """Whether the actual time is within +-tolerance of the estimate (None: not both known)."""
        if self.ratio is None or self.estimate_s is None or self.actual_s is None:
            return None
        return abs(self.actual_s - self.estimate_s) <= tolerance * self.estimate_s


class LedgerRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    instance_id: str
    record_key: str
    execution: str
    model: str | None
    deploy_model: str | None = None
    dry_run: bool
    # benchmarked: a `deploy-model bench` of the deployment in place (it changes nothing)
    # idle-stopped: the idle policy stopped the instance (core/idle.py); the deployment stays current
    # rolled-back: a fleet rollout that failed put this instance back as it was before it (issue 16)
    outcome: Literal[
        "succeeded", "failed", "planned", "undeployed", "idle-stopped", "benchmarked", "rolled-back"
    ]
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
    time_to_healthy: TimeToHealthy | None = None
    # the benchmark after the health check (core.benchmark): null when none ran
    benchmark: BenchmarkResult | None = None
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


def _iso_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _ended(command: CommandRef | None) -> float | None:
    """When the command ended on SSM's clock (else when the state machine saw it end)."""
    if command is None:
        return None
    return command.finished_at if command.finished_at is not None else command.seen_at


def _span(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start is not None and end is not None and end >= start else None


def measure_time_to_healthy(state: ExecutionState) -> TimeToHealthy:
    """What `TimeToHealthy` says, from the state's finished steps and the plan's estimate."""
    steps = state.steps
    sync, install = steps.get("sync"), steps.get("install")
    started, health = steps.get("start_service"), steps.get("health_check")
    estimate = state.plan.time_to_healthy if state.plan is not None else None
    parts: dict[str, float] = {}
    if estimate is not None:
        parts = {
            "transfer_s": estimate.transfer_s,
            "install_s": estimate.install_s,
            "load_s": estimate.load_s,
            "warmup_s": estimate.warmup_s,
        }
    healthy_at = _ended(health) if health is not None and health.status == "Success" else None
    return TimeToHealthy(
        estimate_s=estimate.estimate_s if estimate is not None else None,
        actual_s=_span(_iso_seconds(state.started_at), healthy_at),
        transfer_s=_timing(sync).command_seconds if sync is not None else None,
        install_s=_timing(install).command_seconds if install is not None else None,
        load_s=_span(_ended(started), healthy_at),
        estimated_parts=parts,
    )


def build_record(
    state: ExecutionState,
    outcome: Literal["succeeded", "failed"],
    *,
    instance_type: str,
    now: datetime,
    prices: dict[str, float] | None = None,
) -> LedgerRecord:
    """`prices`: the context's instance_prices over core.cost's table (the record keeps the price)."""
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
        cost_per_hour_usd=cost.hourly_price(instance_type, prices),
        action=plan.action if plan else None,
        quantization=str(plan.quantization) if plan else None,
        port=plan.port if plan else None,
        endpoints=plan.endpoints.model_dump() if plan else {},
        previous=state.result("snapshot_previous"),
        steps={key: _timing(command) for key, command in state.steps.items()},
        results={key: command.result for key, command in state.steps.items()},
        plan=plan.model_dump(mode="json") if plan else None,
        time_to_healthy=None if dry_run else measure_time_to_healthy(state),
        benchmark=None if dry_run else from_state(state, measured_at=now.isoformat()),
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


def bench_record(
    deployed: LedgerRecord, *, now: datetime, command_id: str, result: dict[str, Any]
) -> LedgerRecord:
    """A `deploy-model bench` of the deployment in place: its benchmark, nothing changed."""
    stamp = now.isoformat()
    return LedgerRecord(
        instance_id=deployed.instance_id,
        record_key=f"{stamp}#bench-{command_id}",
        execution=f"ssm:{command_id}",
        model=deployed.model,
        deploy_model=deployed.deploy_model,
        dry_run=False,
        outcome="benchmarked",
        started_at=stamp,
        finished_at=stamp,
        instance_type=deployed.instance_type,
        cost_per_hour_usd=deployed.cost_per_hour_usd,
        port=deployed.port,
        endpoints=deployed.endpoints,
        results={"benchmark": result},
        benchmark=benchmark_from_result(result, measured_at=stamp),
    )


def current_deployment(records: list[LedgerRecord]) -> LedgerRecord | None:
    """The deployment in place, from records newest first: the last success not undeployed since."""
    rolled_back: set[str] = set()  # executions whose deployment was undone since
    for record in records:
        if record.outcome == "rolled-back":
            rolled_back.add(record.execution)
            continue
        if record.outcome == "undeployed":
            return None
        if record.outcome == "succeeded" and not record.dry_run and record.execution not in rolled_back:
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
