"""The completer: SSM's status-change event of a command that ended completes its waiting step."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws
from asoba_deploy.core.completion import InvocationNotEnded, on_status_event, parse_status_event
from asoba_deploy.core.instance_step import token_table
from asoba_deploy.core.settings import settings

logger = Logger()
tracer = Tracer()


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()
    verdict = on_status_event(
        event, config, aws.client("ssm"), token_table(config), aws.client("stepfunctions"), time.time()
    )
    detail = parse_status_event(event)
    logger.info(
        "status event",
        extra={
            "verdict": verdict,
            "command_id": detail.command_id if detail else None,
            "instance_id": detail.instance_id if detail else None,
            "status": detail.status if detail else None,
        },
    )
    if verdict == "not-ended":
        raise InvocationNotEnded(
            f"{detail.command_id if detail else '?'}: the invocation does not show its end yet"
        )
    return {"verdict": verdict}
