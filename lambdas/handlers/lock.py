"""AcquireLock / ReleaseLock: at most one deployment per instance."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, lock
from asoba_deploy.core.settings import settings
from asoba_deploy.core.state import AcquireEvent, LockEvent, parse_event

logger = Logger()


def _holder_running(execution_arn: str) -> bool:
    try:
        status = aws.client("stepfunctions").describe_execution(executionArn=execution_arn)["status"]
    except Exception:  # an unknown holder cannot be running
        return False
    return bool(status == "RUNNING")


@logger.inject_lambda_context(correlation_id_path="state.execution_name")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_event(LockEvent, event, what="lock event")
    state = parsed.state
    table = settings().stack.lock_table
    dynamodb = aws.client("dynamodb")
    holder = state.execution or ""
    if isinstance(parsed, AcquireEvent):
        result = lock.acquire(
            dynamodb,
            table,
            instance_id=state.instance_id,
            holder=holder,
            model=state.request.model or "",
            now=time.time(),
            holder_running=_holder_running,
        )
    else:
        result = lock.release(dynamodb, table, instance_id=state.instance_id, holder=holder)
    logger.info("lock", extra=result)
    return result
