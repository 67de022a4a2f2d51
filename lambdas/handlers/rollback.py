"""Rollback: send/poll the rollback document; `explain` composes the failure's cause."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core.rollback import explain
from handlers.instance_step import make_handler

logger = Logger()
tracer = Tracer()
_instance_step = make_handler("rollback", logger, tracer)


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("action") == "explain":
        explained = explain(event["state"])
        logger.warning("deployment failed", extra=explained)
        return explained
    return _instance_step(event, context)
