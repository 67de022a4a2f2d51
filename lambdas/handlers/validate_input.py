"""ValidateInput: parse the execution input, pick the instance, check model and instance."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws
from asoba_deploy.core.contracts import parse_request
from asoba_deploy.core.settings import settings
from asoba_deploy.core.state import ExecutionState, ValidateInputEvent, parse_event
from asoba_deploy.core.validate_input import check_instance_running, check_model_present, choose_instance

logger = Logger()


@logger.inject_lambda_context(correlation_id_path="execution_name")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_event(ValidateInputEvent, event, what="validate-input event")
    config = settings()
    request = parse_request(parsed.input)
    instance_id = choose_instance(request.instance_id, config.instance_ids)
    instance = check_instance_running(aws.client("ec2"), instance_id)
    model = None
    if request.mode == "deploy":
        assert request.model is not None
        model = check_model_present(aws.client("s3"), config.model_bucket, config.model_prefix, request.model)
    logger.info("validated", extra={"instance_id": instance_id, "model": request.model, "mode": request.mode})
    state = ExecutionState(
        request=request,
        instance_id=instance_id,
        instance=instance,
        model_source=model,
        execution=parsed.execution,
        execution_name=parsed.execution_name,
        started_at=parsed.started_at,
    )
    return state.model_dump(mode="json", exclude_none=True)
