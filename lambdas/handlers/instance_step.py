"""Builds the thin Lambda handler of an instance step: `send` or `poll` one SSM command."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.instance_step import poll_step, send_step
from asoba_deploy.core.settings import settings
from asoba_deploy.core.steps import STEPS

Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def make_handler(step: str, logger: Logger, tracer: Tracer) -> Handler:
    spec = STEPS[step]

    @logger.inject_lambda_context
    @tracer.capture_lambda_handler(capture_response=False)
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        # the execution's name ties every log line of a deployment together
        carrier = event.get("state") or event.get("command") or {}
        logger.set_correlation_id(carrier.get("execution_name"))
        config = settings()
        ssm = aws.client("ssm")
        action = event.get("action")
        if action == "send":
            command = send_step(spec, config, ssm, event["state"], time.time())
            logger.info("sent", extra={"step": step, "command_id": command["command_id"]})
            return command
        if action == "poll":
            command = poll_step(spec, config, ssm, event["command"], time.time())
            if command["status"] != "InProgress":
                logger.info(
                    "finished",
                    extra={"step": step, "status": command["status"], "ssm": command["ssm_status"]},
                )
            return command
        raise InvalidInput(f"{step}: action must be send or poll, got {action!r}")

    return handler
