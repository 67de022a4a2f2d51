"""ValidateInput: parse the execution input, pick the instance, check model and instance."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, rollout
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
    ec2 = aws.client("ec2")
    if request.fleet:
        fleet = rollout.fleet_instances(ec2, request.instances, request.instance_tag, config.instance_ids)
    else:
        fleet = [choose_instance(request.instance_id, config.instance_ids)]
    # every instance is checked before any starts: one that is not running refuses the rollout
    described = [check_instance_running(ec2, target) for target in fleet]
    instance_id, instance = fleet[0], described[0]
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
    output = state.model_dump(mode="json", exclude_none=True)
    # the Rollout Map's items: one per instance (a single instance_id is a one-item rollout)
    output["targets"] = [
        rollout.Target(instance_id=target, instance=summary).model_dump()
        for target, summary in zip(fleet, described, strict=True)
    ]
    output["rollout"] = rollout.plan_rollout(
        len(fleet),
        request.max_concurrency,
        request.tolerated_failures,
        request.rollback_on_failure,
        fleet=request.fleet,
    ).model_dump()
    return output
