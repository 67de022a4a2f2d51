"""WakeInstance: start a stopped instance; report whether it runs and is Online (core/wake.py)."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws
from asoba_deploy.core.settings import settings
from asoba_deploy.core.state import WakeEvent, parse_event
from asoba_deploy.core.wake import WakeProgress, wake

logger = Logger()


@logger.inject_lambda_context(correlation_id_path="state.execution_name")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_event(WakeEvent, event, what="wake-instance event")
    state = parsed.state
    previous = WakeProgress.model_validate(state.wake) if state.wake else None
    config = settings()
    progress = wake(
        aws.client("ec2"),
        aws.client("ssm"),
        state.instance_id,
        previous=previous,
        budget_s=config.step_budgets.wake_instance,
        now=time.time(),
        wait_s=config.poll_seconds,
    )
    logger.info("wake", extra=progress.model_dump())
    return progress.model_dump(mode="json")
