"""Scheduled validation: run the validate document, publish metrics, fail on a failed check."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core.errors import ValidationFailed
from asoba_deploy.core.validation import error_class, failed_checks, metrics_for
from handlers.instance_step import make_handler

logger = Logger()
tracer = Tracer()
metrics = Metrics()
_instance_step = make_handler("validation", logger, tracer)


def _publish(instance_id: str, values: dict[str, float]) -> None:
    metrics.add_dimension(name="instance_id", value=instance_id)
    for name, value in values.items():
        unit = MetricUnit.Bytes if name.endswith("Bytes") else MetricUnit.Count
        metrics.add_metric(name=name, unit=unit, value=value)


@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    action = event.get("action")
    if action == "report":
        state = event["state"]
        result = ((state.get("steps") or {}).get("validation") or {}).get("result") or {}
        values = metrics_for(result, online=True)
        _publish(state["instance_id"], values)
        failed = failed_checks(result)
        if failed:
            raise ValidationFailed(
                f"{len(failed)} check(s) failed on {state['instance_id']}: " + "; ".join(failed)
            )
        return {"passed": True, "metrics": values, "checks": result.get("checks")}
    if action == "report_failure":
        state = event["state"]
        failure = state.get("failure") or {}
        name = str(failure.get("Error") or "ValidationFailed")
        cause = str(failure.get("Cause") or "")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            cause = json.loads(cause).get("errorMessage", cause)
        values = metrics_for(None, online=name != "InstanceUnavailable")
        _publish(state["instance_id"], values)
        raise error_class(name)(cause)
    return _instance_step(event, context)
