"""AcquireLock / ReleaseLock."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, lock
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.settings import settings

logger = Logger()


def _holder_running(execution_arn: str) -> bool:
    try:
        status = aws.client("stepfunctions").describe_execution(executionArn=execution_arn)["status"]
    except Exception:  # an unknown holder cannot be running
        return False
    return bool(status == "RUNNING")


@logger.inject_lambda_context(correlation_id_path="state.execution_name")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    state = event["state"]
    instance_id, holder = state["instance_id"], state["execution"]
    dynamodb = aws.client("dynamodb")
    if event["action"] == "acquire":
        result = lock.acquire(
            dynamodb,
            config.lock_table,
            instance_id=instance_id,
            holder=holder,
            model=state["request"].get("model") or "",
            now=time.time(),
            holder_running=_holder_running,
        )
    elif event["action"] == "release":
        result = lock.release(dynamodb, config.lock_table, instance_id=instance_id, holder=holder)
    else:
        raise InvalidInput(f"lock action must be acquire or release, got {event['action']!r}")
    logger.info("lock", extra=result)
    return result
