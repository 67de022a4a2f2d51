"""RecordDeployment / RecordFailure: write the ledger record; return it as the output."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, ledger
from asoba_deploy.core.settings import settings
from asoba_deploy.core.state import RecordEvent, parse_event

logger = Logger()


@logger.inject_lambda_context(correlation_id_path="state.execution_name")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_event(RecordEvent, event, what="record event")
    config = settings()
    record = ledger.build_record(
        parsed.state, parsed.outcome, instance_type=config.deploy.instance_type, now=ledger.utcnow()
    )
    ledger.put(aws.client("dynamodb"), config.stack.ledger_table, record)
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
