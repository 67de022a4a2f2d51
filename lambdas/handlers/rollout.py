"""Rollout: admit an instance of a fleet rollout, make its row, summarize the table."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, ledger, rollout
from asoba_deploy.core.settings import settings
from asoba_deploy.core.state import parse_event

logger = Logger()


def _record_of(execution: str, instance_id: str) -> ledger.LedgerRecord | None:
    """This execution's ledger record of the instance (RecordFailure wrote it), if any."""
    table = settings().stack.ledger_table
    for record in ledger.recent(aws.client("dynamodb"), table, instance_id, limit=5):
        if record.execution == execution:
            return record
    return None


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_event(rollout.RolloutEvent, event, what="rollout event")
    lock_table = settings().stack.lock_table
    if isinstance(parsed, rollout.AdmitEvent):
        failures = rollout.failures_so_far(aws.client("dynamodb"), lock_table, parsed.execution)
        go = rollout.admitted(failures, parsed.rollout)
        logger.info("admit", extra={"instance_id": parsed.instance_id, "failures": failures, "go": go})
        row = None if go else rollout.not_started_row(parsed.instance_id, failures, parsed.rollout)
        return {"go": go, "row": row.model_dump(mode="json") if row else None}
    if isinstance(parsed, rollout.DoneEvent):
        return rollout.done_row(parsed.instance_id, parsed.dry_run, parsed.value).model_dump(mode="json")
    if isinstance(parsed, rollout.FailedEvent):
        failures = rollout.count_failure(
            aws.client("dynamodb"), lock_table, parsed.execution, now=time.time()
        )
        record = _record_of(parsed.execution, parsed.instance_id)
        row = rollout.failed_row(
            parsed.instance_id,
            record.error if record and record.error else parsed.failure.get("Error"),
            record.cause if record and record.cause else parsed.failure.get("Cause"),
            record.plan if record else None,
            parsed.started_at,
            ledger.utcnow(),
        )
        logger.info("failed", extra={"instance_id": parsed.instance_id, "failures": failures})
        return row.model_dump(mode="json")
    if isinstance(parsed, rollout.UndoneEvent):
        row = rollout.undone_row(parsed.row, parsed.failure)
        if row.outcome == "rolled-back":
            config = settings()
            record = rollout.rolled_back_record(
                row,
                parsed.execution,
                parsed.model,
                instance_type=config.deploy.instance_type,
                now=ledger.utcnow(),
            )
            ledger.put(aws.client("dynamodb"), config.stack.ledger_table, record)
        logger.info("undone", extra={"instance_id": row.instance_id, "outcome": row.outcome})
        return row.model_dump(mode="json")
    assert isinstance(parsed, rollout.SummarizeEvent)
    summary = rollout.summarize(parsed.rows, parsed.rollout, parsed.dry_run)
    logger.info("summary", extra={"outcome": summary.outcome, "counts": summary.counts})
    return summary.model_dump(mode="json")
