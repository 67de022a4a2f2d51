"""Plan: read the model's manifest from S3 and plan it against the instance snapshot.

Returns `Plan.model_dump(mode="json")` (asoba_deploy.core.planner); `fits: false` is a
result, not an error: the state machine's Fits? choice turns it into InsufficientResources.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from asoba_deploy.core import aws
from asoba_deploy.core.catalog import load_catalog
from asoba_deploy.core.contracts import describe_validation_error
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.manifest import read_manifest
from asoba_deploy.core.planner import plan
from asoba_deploy.core.planner.timing import elapsed_since
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import BotoS3Reader, CountingReader
from asoba_deploy.core.settings import Settings, settings
from asoba_deploy.core.snapshot import InstanceSnapshot
from asoba_deploy.core.state import PlanEvent, parse_event

logger = Logger()


def plan_event(event: Any, client: Any, config: Settings) -> dict[str, Any]:
    """The handler's work with its S3 client and settings passed in."""
    parsed = parse_event(PlanEvent, event, what="plan input")
    try:
        snapshot = InstanceSnapshot.model_validate(parsed.snapshot)
    except ValidationError as error:
        raise InvalidInput(f"plan input: snapshot: {describe_validation_error(error)}") from None
    request = parsed.request
    if request.model is None:
        raise InvalidInput("plan input: request.model is required (mode 'deploy')")
    policy = Policy.from_config(config.deploy)
    prefix = config.model_prefix

    reader = CountingReader(BotoS3Reader(client, config.model_bucket))
    catalog = load_catalog(reader, prefix + config.stack.catalog_key)
    manifest = read_manifest(
        reader, prefix, request.model, catalog, prefer_awq_variant=policy.prefer_awq_variant
    )
    elapsed = elapsed_since(parsed.started_at, datetime.now(UTC))
    result = plan(manifest, snapshot, request, policy, elapsed_s=elapsed)
    logger.info(
        "planned",
        extra={
            "model": result.model,
            "deploy_model": result.deploy_model,
            "action": result.action,
            "quantization": result.quantization,
            "fits": result.fits,
            "gpu_need_bytes": result.gpu.need_bytes,
            "s3_bytes_read": reader.bytes_read,
            "s3_gets": reader.gets,
            "s3_lists": reader.lists,
        },
    )
    # the state carries the plan: its file list is cut, its counts are whole
    return result.listed().model_dump(mode="json")


@logger.inject_lambda_context(correlation_id_path="execution_name")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = settings()  # missing settings fail before any AWS call
    return plan_event(event, aws.client("s3"), config)
