"""The deployment ledger: one record per execution (deploy, dry run or failure)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from asoba_deploy.core import cost
from asoba_deploy.core.benchmark import BenchmarkResult, from_state
from asoba_deploy.core.benchmark import from_result as benchmark_from_result
from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.config import RUNTIME_UNIT
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


class SwitchOutcome(BaseModel):
    """How the stable endpoint moved to the deployment (the plan's strategy), and how long it
    refused or failed requests, measured:

    - blue-green behind the router: none (the router moves each new request, the old backend's
      finish), or the switch's `gap_s` when it first put the router in front of a unit that held
      the port itself (its listener closed, the router not listening yet);
    - stop-start in place: from start-service's restart to the health check's healthy answer,
      both on the instance's clock (to the health check's poll interval);
    - stop-start behind the router: from the evict's stop of the old unit (once the new model
      synced) to the router on the new unit, both on the instance's clock, while the router had
      no backend that answered.
    """

    strategy: Literal["none", "stop-start", "blue-green"]
    downtime_s: float | None = None  # None: not measured (the steps did not all run)
    basis: str = ""


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
    # how the stable endpoint moved and its measured downtime (None: dry runs, older records)
    switch: SwitchOutcome | None = None
    # an `undeployed` record: the runtime unit removed (None: an older record, which removed
    # everything the instance served)
    unit: str | None = None


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


def _instance_time(result: dict[str, Any] | None, key: str) -> float | None:
    return _iso_seconds(str(result.get(key) or "")) if isinstance(result, dict) else None


def measure_switch(state: ExecutionState) -> SwitchOutcome | None:
    """What `SwitchOutcome` says, from the plan's strategy and the finished steps' results."""
    plan = state.plan
    if plan is None or plan.strategy == "none":
        return None
    if plan.strategy == "blue-green":
        switched = state.result("switch")
        if not isinstance(switched, dict):
            return SwitchOutcome(strategy="blue-green", basis="the switch did not run")
        gap = switched.get("gap_s")
        if isinstance(gap, int | float):
            basis = "the router took the stable port over from the unit that held it (gap_s)"
            return SwitchOutcome(strategy="blue-green", downtime_s=round(float(gap), 3), basis=basis)
        return SwitchOutcome(strategy="blue-green", downtime_s=0.0, basis="the router switched backends")
    if plan.switch is not None:
        # behind the router: the old unit stops once the new model synced (evict), the new one
        # starts and passes its health check, and the router moves to it (switch)
        stopped_at = _instance_time(state.result("evict"), "stopped_at")
        switched_at = _instance_time(state.result("switch"), "switched_at")
        return SwitchOutcome(
            strategy="stop-start",
            downtime_s=_span(stopped_at, switched_at),
            basis="the evict's stop to the router on the new unit (the instance's clock)",
        )
    restarted = _instance_time(state.result("start_service"), "restarted_at")
    healthy = _instance_time(state.result("health_check"), "checked_at")
    return SwitchOutcome(
        strategy="stop-start",
        downtime_s=_span(restarted, healthy),
        basis="start-service's restart to the healthy answer (the instance's clock)",
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
        switch=None if dry_run else measure_switch(state),
        error=state.failure.Error if state.failure else None,
        cause=state.failure.Cause if state.failure else None,
    )


def undeploy_record(
    instance_id: str,
    *,
    instance_type: str,
    now: datetime,
    command_id: str,
    result: dict[str, Any],
    unit: str = RUNTIME_UNIT,
    model: str | None = None,
) -> LedgerRecord:
    """An undeploy ends what `unit` served (`model`, when the ledger knew it): the inventory
    (`resident_models`) drops that unit, the other resident models keep serving."""
    stamp = now.isoformat()
    return LedgerRecord(
        instance_id=instance_id,
        record_key=f"{stamp}#undeploy-{command_id}",
        execution=f"ssm:{command_id}",
        model=model,
        dry_run=False,
        outcome="undeployed",
        started_at=stamp,
        finished_at=stamp,
        instance_type=instance_type,
        cost_per_hour_usd=ON_DEMAND_USD_PER_HOUR.get(instance_type),
        results={"undeploy": result},
        unit=unit,
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


# Where the bytes of a resident come from: a later collect-resources measured its unit, or
# nothing measured it since it was deployed and the plan's estimate stands in.
MemorySource = Literal["measured", "planned"]


class Resident(BaseModel):
    """One model served on the instance, as the ledger knows it (`resident_models`)."""

    model: str | None
    deploy_model: str | None = None  # the folder deployed (a variant of `model`, or the same)
    unit: str
    port: int | None
    engine: str | None = None
    quantization: str | None = None
    gpu_memory_bytes: int | None = None
    rss_bytes: int | None = None
    memory_source: MemorySource | None = None  # None: neither measured nor planned (older records)
    since: str  # when its deployment finished
    execution: str  # the deployment's execution
    status_url: str | None = None  # its runtime's /status, as the deployment recorded it
    # LoRA adapters that joined its process since (their OpenAI model ids), oldest first
    adapters: list[str] = []

    @property
    def primary(self) -> bool:
        return self.unit == RUNTIME_UNIT


def _deployed_unit(record: LedgerRecord) -> str:
    """The runtime unit a deployment went into: its plan's (older plans: the primary)."""
    unit = (record.plan or {}).get("unit")
    return unit if isinstance(unit, str) and unit else RUNTIME_UNIT


@dataclass
class _Serving:
    """What one runtime unit serves in the replay: the deployment that put its process there,
    and the adapters that joined that process since (planner rule 6)."""

    index: int
    record: LedgerRecord
    adapters: list[str] = field(default_factory=list)


def _served(records: list[LedgerRecord]) -> dict[str, _Serving]:
    return _replay(records)[0]


def _replay(records: list[LedgerRecord]) -> tuple[dict[str, _Serving], str]:
    """Replay `records`, oldest first: runtime unit -> what serves in it.

    A succeeded deployment takes its unit and stops its plan's `evict_units`; an adapter that
    joined a unit's process (the plan's `joins`) adds itself to that unit's adapters; an undeploy
    removes its unit (an older one without a unit removed everything); a fleet's `rolled-back`
    record undoes its execution's deployment, so the one before it (and what it evicted) serves
    again, as `current_deployment` always read it. Failures, dry runs, benchmarks and idle stops
    change nothing.
    """
    rolled_back = {r.execution for r in records if r.outcome == "rolled-back"}
    served: dict[str, _Serving] = {}
    stable = RUNTIME_UNIT  # the unit the stable endpoint (the seed's port) reaches
    for index, record in enumerate(records):
        if record.outcome == "succeeded" and not record.dry_run and record.execution not in rolled_back:
            plan = record.plan or {}
            switch = plan.get("switch") or {}
            for evicted in [*(plan.get("evict_units") or []), switch.get("old_unit")]:
                if evicted:
                    served.pop(str(evicted), None)  # evicted, or stopped by the switch
            unit = _deployed_unit(record)
            if switch.get("stable_port") or unit == RUNTIME_UNIT:
                stable = unit
            name = record.deploy_model or record.model
            if plan.get("joins") and unit in served and name:
                joined = served[unit]
                joined.adapters = [a for a in joined.adapters if a != name] + [name]
            else:
                served[unit] = _Serving(index, record)
        elif record.outcome == "undeployed":
            if record.unit is None:
                served.clear()
            else:
                served.pop(record.unit, None)
    return served, stable


def current_deployment(records: list[LedgerRecord]) -> LedgerRecord | None:
    """The stable endpoint's deployment in place (the primary unit's, or the unit a switch pointed
    the router at), from records newest first: the last success into it
    not undeployed, evicted or rolled back since. A resident model's deploy or undeploy leaves it."""
    served, stable = _replay(list(reversed(records)))
    found = served.get(stable)
    return found.record if found is not None else None


def resident_deployment(records: list[LedgerRecord], model: str) -> LedgerRecord | None:
    """The deployment serving `model` (requested or deployed folder) in any runtime unit, from
    records in any order (every record of the instance, `all_records`)."""
    for serving in _served(sorted(records, key=_effect_order)).values():
        if model in (serving.record.model, serving.record.deploy_model, *serving.adapters):
            return serving.record
    return None


def _measured(records: list[LedgerRecord], unit: str) -> tuple[int, int] | None:
    """(gpu_memory_bytes, rss_bytes) of `unit` from the newest of `records` whose collect-resources
    saw it running (an inactive unit's zeros say nothing of what the model takes)."""
    for record in reversed(records):
        collected = record.results.get("collect_resources")
        services = collected.get("services") if isinstance(collected, dict) else None
        for service in services if isinstance(services, list) else []:
            if not isinstance(service, dict) or service.get("unit") != unit:
                continue
            if service.get("state") in ("active", "activating", "reloading"):
                return int(service.get("gpu_memory_bytes") or 0), int(service.get("rss_bytes") or 0)
    return None


def _planned_need(plan: dict[str, Any], part: str) -> int | None:
    estimate = plan.get(part)
    need = estimate.get("need_bytes") if isinstance(estimate, dict) else None
    return int(need) if isinstance(need, int | float) else None


def _effect_order(record: LedgerRecord) -> tuple[float, str]:
    """When a record took effect (its end), then the table's order (its key)."""
    finished = _iso_seconds(record.finished_at)
    return (finished if finished is not None else 0.0, record.record_key)


def resident_models(records: list[LedgerRecord]) -> list[Resident]:
    """Every model the instance serves, from its ledger records (any order; every record of the
    instance for a truthful answer, see `all_records`), by port. The memory is the newest
    collect-resources measurement of its unit taken after its deployment, else the plan's need."""
    ordered = sorted(records, key=_effect_order)
    residents: list[Resident] = []
    for unit, serving in _served(ordered).items():
        index, record = serving.index, serving.record
        plan = record.plan or {}
        measured = _measured(ordered[index + 1 :], unit)
        gpu, rss = (
            measured if measured is not None else (_planned_need(plan, "gpu"), _planned_need(plan, "ram"))
        )
        source: MemorySource | None = "measured" if measured is not None else None
        if source is None and (gpu is not None or rss is not None):
            source = "planned"
        residents.append(
            Resident(
                model=record.model,
                deploy_model=record.deploy_model,
                unit=unit,
                port=record.port if record.port is not None else plan.get("port"),
                engine=plan.get("engine"),
                quantization=record.quantization or plan.get("quantization"),
                gpu_memory_bytes=gpu,
                rss_bytes=rss,
                memory_source=source,
                since=record.finished_at,
                execution=record.execution,
                status_url=record.endpoints.get("status"),
                adapters=list(serving.adapters),
            )
        )
    return sorted(residents, key=lambda r: (r.port is None, r.port or 0, r.unit))


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


def _records(response: dict[str, Any]) -> list[LedgerRecord]:
    return [
        LedgerRecord.model_validate(json.loads(item["record"]["S"])) for item in response.get("Items", [])
    ]


def recent(dynamodb: Any, table: str, instance_id: str, limit: int = 20) -> list[LedgerRecord]:
    """Newest first."""
    response = dynamodb.query(
        TableName=table,
        KeyConditionExpression="instance_id = :id",
        ExpressionAttributeValues={":id": {"S": instance_id}},
        ScanIndexForward=False,
        Limit=limit,
    )
    return _records(response)


def all_records(dynamodb: Any, table: str, instance_id: str) -> list[LedgerRecord]:
    """Every record of the instance, oldest first: a query page is at most 1 MB, so the pages are
    followed (LastEvaluatedKey) to the end. What the inventory and the cost need."""
    query: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "instance_id = :id",
        "ExpressionAttributeValues": {":id": {"S": instance_id}},
        "ScanIndexForward": True,
    }
    records: list[LedgerRecord] = []
    while True:
        response = dynamodb.query(**query)
        records += _records(response)
        if not response.get("LastEvaluatedKey"):
            return records
        query["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def utcnow() -> datetime:
    return datetime.now(UTC)
