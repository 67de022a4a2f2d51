"""The execution contract: what `start-execution --input` accepts."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.rollout import (
    MAX_CONCURRENCY,
    InstanceTag,
    check_instance_list,
    check_tolerated_failures,
)

# A model name is one path segment: no slashes, no leading dot, no "..".
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
INSTANCE_ID_PATTERN = r"^(i|mi)-[0-9a-f]{8,17}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)

Port = Annotated[int, Field(ge=1024, le=65535)]


def check_model_name(value: str) -> str:
    if not _MODEL_NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            "must be one name of letters, digits, '.', '_' or '-' (no '/', no '..'), 1-128 characters"
        )
    return value


class DeployRequest(BaseModel):
    """Input of one execution of the deployment state machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["deploy", "validate"] = "deploy"
    model: str | None = None
    dry_run: StrictBool = False
    force_quantize: StrictBool = False
    allow_stop_flux: StrictBool = True
    port: Port | None = None
    context_tokens: Annotated[int, Field(ge=256, le=131072)] = 4096
    instance_id: Annotated[str, Field(pattern=INSTANCE_ID_PATTERN)] | None = None
    # a fleet rollout (core/rollout.py): these instances, or the stack's instances with this tag
    instances: list[Annotated[str, Field(pattern=INSTANCE_ID_PATTERN)]] | None = None
    instance_tag: InstanceTag | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)] = 1
    tolerated_failures: Annotated[StrictInt | str, Field(union_mode="left_to_right")] = 0
    rollback_on_failure: StrictBool = False
    # measure the model once it is healthy (core.benchmark); false skips it
    benchmark: StrictBool = True
    # where the runtime loads the weights from (core.loading), over the load_from context key:
    # auto (the faster way the plan finds), stream (from S3 while the sync runs beside) or disk
    load_from: Literal["auto", "stream", "disk"] | None = None
    # the models already served (core.residents): replace the primary (the seed's behaviour) or
    # keep them, the new one beside them on a free port when everything fits
    resident: Literal["replace", "keep"] = "replace"
    # with resident "keep": when the new model does not fit, stop the least recently used
    # resident models until it does (absent: say which would have to stop, change nothing)
    evict: Literal["lru"] | None = None
    # how the stable endpoint moves from the model serving it to this one (core.planner rule 7):
    # blue-green (new beside old, then the router switches), stop-start (old first, the downtime
    # measured) or auto (blue-green when both fit together)
    strategy: Literal["auto", "stop-start", "blue-green"] = "auto"

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)

    @field_validator("instances")
    @classmethod
    def _instances(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_instance_list(value)

    @field_validator("tolerated_failures")
    @classmethod
    def _tolerated(cls, value: int | str) -> int | str:
        return check_tolerated_failures(value)

    @property
    def fleet(self) -> bool:
        return self.instances is not None or self.instance_tag is not None

    def model_post_init(self, __context: Any) -> None:
        if self.mode == "deploy" and self.model is None:
            raise ValueError("model: required when mode is 'deploy'")
        chosen = [n for n in ("instance_id", "instances", "instance_tag") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)}: give one way of naming the instances")
        if self.evict is not None and self.resident != "keep":
            raise ValueError("evict: only with resident 'keep' (with 'replace' nothing stays to evict)")
        if self.fleet and self.mode != "deploy":
            raise ValueError("instances/instance_tag: a fleet is deployed, not validated (mode 'deploy')")


def describe_validation_error(error: ValidationError) -> str:
    """One line naming every bad field, for the execution's cause."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "input"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_request(event: object) -> DeployRequest:
    """Parse the raw execution input or raise InvalidInput with a readable cause."""
    if not isinstance(event, dict):
        raise InvalidInput(f"input must be a JSON object, got {type(event).__name__}")
    try:
        return DeployRequest.model_validate(event)
    except ValidationError as error:
        raise InvalidInput(describe_validation_error(error)) from None
    except ValueError as error:
        raise InvalidInput(str(error)) from None
