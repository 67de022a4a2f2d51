"""Plan: read the model's manifest from S3 and plan it against the instance snapshot.

Event: `{"request": <DeployRequest dict>, "snapshot": <InstanceSnapshot dict>, ...}`
(other keys the state machine carries are ignored). Returns `Plan.model_dump(mode="json")`
(see core.planner for the fields); `fits: false` is a result, not an error: the state
machine's Fits? choice turns it into InsufficientResources.

Environment: MODEL_BUCKET (required), MODEL_PREFIX (default ""), CATALOG_KEY (default
"catalog.json", relative to MODEL_PREFIX), and the policy variables of core.policy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asoba_deploy.core import aws
from asoba_deploy.core.catalog import load_catalog
from asoba_deploy.core.contracts import describe_validation_error, parse_request
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.manifest import read_manifest
from asoba_deploy.core.planner import plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import BotoS3Reader, CountingReader
from asoba_deploy.core.snapshot import InstanceSnapshot

logger = Logger()


class PlannerEnv(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_bucket: str = Field(min_length=1)
    model_prefix: str = ""
    catalog_key: str = "catalog.json"

    @property
    def prefix(self) -> str:
        prefix = self.model_prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PlannerEnv:
        values = {name: environ[name.upper()] for name in cls.model_fields if name.upper() in environ}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise InvalidInput(f"planner environment: {describe_validation_error(error)}") from None


class PlanEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request: dict[str, Any]
    snapshot: dict[str, Any]


def plan_event(event: Any, client: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    """The handler's work with its S3 client and environment passed in."""
    try:
        parsed = PlanEvent.model_validate(event)
        snapshot = InstanceSnapshot.model_validate(parsed.snapshot)
    except ValidationError as error:
        raise InvalidInput(f"plan input: {describe_validation_error(error)}") from None
    request = parse_request(parsed.request)
    if request.model is None:
        raise InvalidInput("plan input: request.model is required (mode 'deploy')")
    env = PlannerEnv.from_environ(environ)
    policy = Policy.from_env(environ)

    reader = CountingReader(BotoS3Reader(client, env.model_bucket))
    catalog = load_catalog(reader, env.prefix + env.catalog_key)
    manifest = read_manifest(
        reader, env.prefix, request.model, catalog, prefer_awq_variant=policy.prefer_awq_variant
    )
    result = plan(manifest, snapshot, request, policy)
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
    return result.model_dump(mode="json")


@logger.inject_lambda_context(correlation_id_path="execution_name")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return plan_event(event, aws.client("s3"), os.environ)
