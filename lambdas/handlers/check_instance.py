"""The scheduled instance check: run its document, publish metrics, fail on a failed check."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, cost, idle, ledger, metric_names
from asoba_deploy.core.check_instance import error_class, failed_checks, metrics_for
from asoba_deploy.core.instance_step import run_action
from asoba_deploy.core.rollback import cause_text
from asoba_deploy.core.settings import settings
from asoba_deploy.core.state import (
    CheckInstanceEvent,
    ExecutionState,
    IdleEvent,
    ReportEvent,
    ReportFailureEvent,
    StoppedEvent,
    parse_event,
)
from asoba_deploy.core.steps import STEPS

logger = Logger()
tracer = Tracer()
metrics = Metrics()
STEP = STEPS["check-instance"]


def _publish(instance_id: str, values: dict[str, float]) -> None:
    metrics.add_dimension(name="instance_id", value=instance_id)
    for name, value in values.items():
        unit = (
            MetricUnit.Bytes
            if name.endswith("Bytes")
            else MetricUnit.Seconds
            if name.endswith("Seconds")
            else MetricUnit.Count
        )
        metrics.add_metric(name=name, unit=unit, value=value)


@metrics.log_metrics
@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_event(CheckInstanceEvent, event, what="check-instance event")
    if isinstance(parsed, ReportEvent):
        state = parsed.state
        result = state.result(STEP.key) or {}
        values = metrics_for(result, online=True)
        _publish(state.instance_id, values)
        failed = failed_checks(result)
        if failed:
            raise STEP.error(f"{len(failed)} check(s) failed on {state.instance_id}: " + "; ".join(failed))
        return {"passed": True, "metrics": values, "checks": result.get("checks")}
    if isinstance(parsed, ReportFailureEvent):
        state = parsed.state
        name = state.failure.Error if state.failure else STEP.error.__name__
        values = metrics_for(None, online=name != "InstanceUnavailable")
        _publish(state.instance_id, values)
        raise error_class(name)(cause_text(state.failure.Cause if state.failure else ""))
    if isinstance(parsed, StoppedEvent):
        values = {metric_names.INSTANCE_STOPPED: 1.0, metric_names.INSTANCE_ONLINE: 0.0}
        _publish(parsed.state.instance_id, values)
        return {"passed": None, "stopped": True, "metrics": values}
    if isinstance(parsed, IdleEvent):
        return _observe_activity(parsed.state)
    return run_action(STEP, parsed, logger)


def _observe_activity(state: ExecutionState) -> dict[str, Any]:
    """The requests since the last check, the idle time, the price of running, and the idle
    policy's stop (core/idle.py)."""
    config = settings()
    dynamodb, now = aws.client("dynamodb"), time.time()
    table = config.stack.activity_table
    previous = idle.read_activity(dynamodb, table, state.instance_id)
    seen = idle.observe(
        previous, idle.counters_from(state.result(STEP.key)), instance_id=state.instance_id, now=now
    )
    idle.write_activity(dynamodb, table, seen.activity)
    verdict = idle.decide(seen.activity, config.deploy.idle_stop_minutes, now=now)
    instance_type = str((state.instance or {}).get("instance_type") or config.deploy.instance_type)
    price = cost.hourly_price(instance_type, config.deploy.instance_prices)
    stopped, refused = False, None
    if verdict.stop:
        refused = idle.stop_if_no_deployment(
            dynamodb,
            aws.client("ec2"),
            config.stack.lock_table,
            instance_id=state.instance_id,
            holder=state.execution or "",
            holder_running=idle.execution_running(aws.client("stepfunctions")),
        )
        stopped = refused is None
        if stopped:
            record = idle.idle_stop_record(
                state.instance_id,
                execution=state.execution or "",
                instance_type=instance_type,
                cost_per_hour_usd=price,
                now=ledger.utcnow(),
                verdict=verdict,
            )
            ledger.put(dynamodb, config.stack.ledger_table, record)
    _publish(state.instance_id, idle.activity_metrics(seen, verdict, stopped=stopped, hourly_price_usd=price))
    outcome = {
        **verdict.model_dump(mode="json"),
        "stopped": stopped,
        "refused": refused,
        "requests_served": seen.requests_served,
        "policy_minutes": config.deploy.idle_stop_minutes,
    }
    logger.info("activity", extra=outcome)
    return outcome
