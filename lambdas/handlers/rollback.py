"""Rollback: send/poll the rollback document; `explain` composes the failure's cause."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core.instance_step import run_action
from asoba_deploy.core.rollback import explain
from asoba_deploy.core.state import ExplainEvent, RollbackEvent, parse_event
from asoba_deploy.core.steps import STEPS

logger = Logger()
tracer = Tracer()
STEP = STEPS["rollback"]


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_event(RollbackEvent, event, what="rollback event")
    if isinstance(parsed, ExplainEvent):
        logger.set_correlation_id(parsed.state.execution_name)
        explained = explain(parsed.state)
        logger.warning("deployment failed", extra=explained)
        return explained
    return run_action(STEP, parsed, logger)
