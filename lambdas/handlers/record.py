"""RecordDeployment / RecordFailure: write the ledger record; return it as the output."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, ledger, metric_names
from asoba_deploy.core.benchmark import metric_values
from asoba_deploy.core.deployment_metrics import deployment_metrics
from asoba_deploy.core.settings import settings
from asoba_deploy.core.state import RecordEvent, parse_event

logger = Logger()
metrics = Metrics()
# the benchmark's metrics (core.metric_names) and their units
BENCHMARK_UNITS = {
    metric_names.BENCHMARK_DECODE_TOKENS_PER_SECOND: MetricUnit.CountPerSecond,
    metric_names.BENCHMARK_TTFT_SECONDS: MetricUnit.Seconds,
}


def _publish_benchmark(record: ledger.LedgerRecord) -> None:
    """A measured benchmark's decode tokens/s and time to first token, per instance."""
    values = metric_values(record.benchmark) if record.benchmark is not None else {}
    if not values:
        return
    metrics.add_dimension(name=metric_names.INSTANCE, value=record.instance_id)
    for name, value in values.items():
        metrics.add_metric(name=name, unit=BENCHMARK_UNITS[name], value=value)


def _publish_deployment(record: ledger.LedgerRecord) -> None:
    """The deployment's outcome, duration and time to healthy, per instance (the dashboard's)."""
    values = deployment_metrics(record)
    if not values:
        return
    metrics.add_dimension(name=metric_names.INSTANCE, value=record.instance_id)
    for name, value in values.items():
        unit = MetricUnit.Seconds if name.endswith("Seconds") else MetricUnit.Count
        metrics.add_metric(name=name, unit=unit, value=value)


@metrics.log_metrics
@logger.inject_lambda_context(correlation_id_path="state.execution_name")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_event(RecordEvent, event, what="record event")
    config = settings()
    record = ledger.build_record(
        parsed.state,
        parsed.outcome,
        instance_type=config.deploy.instance_type,
        now=ledger.utcnow(),
        prices=config.deploy.instance_prices,
    )
    ledger.put(aws.client("dynamodb"), config.stack.ledger_table, record)
    _publish_benchmark(record)
    _publish_deployment(record)
    timing = record.time_to_healthy
    logger.info(
        "recorded",
        extra={
            "outcome": record.outcome,
            "model": record.model,
            "time_to_healthy_s": timing.actual_s if timing else None,
            "estimate_s": timing.estimate_s if timing else None,
        },
    )
    return record.model_dump(mode="json")
