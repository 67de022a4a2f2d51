"""The scheduled instance check: run its document, publish metrics, fail on a failed check."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core.check_instance import error_class, failed_checks, metrics_for
from asoba_deploy.core.instance_step import run_action
from asoba_deploy.core.rollback import cause_text
from asoba_deploy.core.state import CheckInstanceEvent, ReportEvent, ReportFailureEvent, parse_event
from asoba_deploy.core.steps import STEPS

logger = Logger()
tracer = Tracer()
metrics = Metrics()
STEP = STEPS["check-instance"]


def _publish(instance_id: str, values: dict[str, float]) -> None:
    metrics.add_dimension(name="instance_id", value=instance_id)
    for name, value in values.items():
        unit = MetricUnit.Bytes if name.endswith("Bytes") else MetricUnit.Count
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
    return run_action(STEP, parsed, logger)
