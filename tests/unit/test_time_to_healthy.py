"""The ledger's time_to_healthy: the plan's estimate beside what the commands' own timings
measured, and the +-30% verdict make demo prints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.ledger import TimeToHealthy, build_record, measure_time_to_healthy
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.planner.models import TimeToHealthy as PlannedTime
from asoba_deploy.core.state import ExecutionState
from tests.unit.test_steps import qwen_plan  # noqa: F401  (the fixture)

START = datetime(2026, 12, 2, 3, 0, 0, tzinfo=UTC).timestamp()


def ran(step: str, sent: float, finished: float | None, seen: float, **extra: Any) -> CommandRef:
    """A finished command, its times as seconds after the execution started."""
    return CommandRef(
        step=step,
        document=step,
        command_id=f"{step:-<36}"[:36],
        instance_id="i-0123456789abcdef0",
        sent_at=START + sent,
        first_sent_at=START + extra.pop("first", sent),
        deadline=START + 3600,
        status="Success",
        finished_at=None if finished is None else START + finished,
        seen_at=START + seen,
        result={"ok": True},
        **extra,
    )


def deployed(plan: Plan, **steps: CommandRef) -> ExecutionState:
    return ExecutionState(
        request=DeployRequest(model=plan.model),
        instance_id="i-0123456789abcdef0",
        execution="arn:aws:states:us-west-2:123456789012:execution:m:e",
        execution_name="e",
        started_at="2026-12-02T03:00:00.000Z",
        plan=plan,
        steps=steps,
    )


@pytest.fixture
def estimated(qwen_plan: Plan) -> Plan:  # noqa: F811
    estimate = PlannedTime(estimate_s=40.0, transfer_s=20.0, install_s=8.0, load_s=10.0, warmup_s=2.0)
    return qwen_plan.model_copy(update={"time_to_healthy": estimate})


def test_the_parts_come_from_the_commands_own_timings(estimated: Plan) -> None:
    # Given an execution whose sync and install ran at once, then the service started and turned
    # healthy (the health check sent twice: its last run saw healthy)
    state = deployed(
        estimated,
        snapshot_previous=ran("snapshot_previous", 2.0, 2.5, 3.0),
        sync=ran("sync", 3.0, 21.5, 22.0),
        install=ran("install", 3.1, 9.1, 10.0),
        start_service=ran("start_service", 22.5, 23.0, 23.4),
        health_check=ran("health_check", 33.0, 36.2, 36.9, first=23.5, attempt=2),
    )

    timing = measure_time_to_healthy(state)

    # Then each part is its command's run, the load runs from the restart to healthy, and the
    # actual time from the execution's start to the health check's end on SSM's clock
    assert timing.model_dump() == {
        "estimate_s": 40.0,
        "actual_s": 36.2,
        "transfer_s": 18.5,
        "install_s": 6.0,
        "load_s": 13.2,
        "estimated_parts": {"transfer_s": 20.0, "install_s": 8.0, "load_s": 10.0, "warmup_s": 2.0},
    }
    assert timing.ratio == pytest.approx(36.2 / 40.0)
    assert timing.within() is True
    # and the ledger record carries it
    record = build_record(state, "succeeded", instance_type="g5.4xlarge", now=datetime.now(UTC))
    assert record.time_to_healthy == timing


def test_a_command_without_ssm_end_time_counts_from_when_it_was_seen(estimated: Plan) -> None:
    state = deployed(
        estimated,
        start_service=ran("start_service", 1.0, None, 5.0),
        health_check=ran("health_check", 6.0, None, 9.5),
    )
    timing = measure_time_to_healthy(state)
    assert (timing.load_s, timing.actual_s, timing.transfer_s) == (4.5, 9.5, None)


def test_without_an_estimate_or_a_healthy_service_those_are_null(qwen_plan: Plan) -> None:  # noqa: F811
    # A plan recorded before estimates, and an execution that failed before the health check
    state = deployed(
        qwen_plan.model_copy(update={"time_to_healthy": None}), sync=ran("sync", 3.0, 13.0, 14.0)
    )
    timing = measure_time_to_healthy(state)
    assert (timing.estimate_s, timing.actual_s, timing.load_s, timing.transfer_s) == (None, None, None, 10.0)
    assert (timing.ratio, timing.within(), timing.estimated_parts) == (None, None, {})
    # a dry run records no time to healthy at all
    dry = state.model_copy(update={"request": DeployRequest(model=qwen_plan.model, dry_run=True)})
    assert (
        build_record(dry, "succeeded", instance_type="g5.4xlarge", now=datetime.now(UTC)).time_to_healthy
        is None
    )


@pytest.mark.parametrize(
    ("estimate", "actual", "within"),
    [
        (100.0, 100.0, True),
        (100.0, 130.0, True),
        (100.0, 70.0, True),
        (100.0, 131.0, False),
        (100.0, 69.0, False),
    ],
)
def test_within_thirty_percent(estimate: float, actual: float, within: bool) -> None:
    assert TimeToHealthy(estimate_s=estimate, actual_s=actual).within() is within
