"""Deployment configuration read from CDK context (`cdk.json` or `cdk synth -c key=value`)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"
BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
PREFIX = r"^$|^[A-Za-z0-9._/-]{1,200}/$"
REGION = r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$"
UNIT = r"^[A-Za-z0-9@._-]{1,100}\.service$"
ABS_PATH = r"^/[A-Za-z0-9._/-]{0,200}$"

CONTEXT_KEYS = (
    "instance_ids",
    "model_bucket",
    "model_prefix",
    "region",
    "account",
    "instance_type",
    "flux_service",
    "thresholds",
    "poll_interval_seconds",
    "step_budgets",
    "validation_rate_minutes",
    "alarm_email",
    "instance_roots",
    "base_python",
    "service_user",
)


class ConfigError(Exception):
    """A context value is missing or malformed; the message names the key."""


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    small_model_gb: float = Field(default=3, gt=0)
    quantize_above_gpu_gb: float = Field(default=20, gt=0)
    coexist_port: int = Field(default=8001, ge=1024, le=65535)
    replace_port: int = Field(default=8000, ge=1024, le=65535)


class StepBudgets(BaseModel):
    """Seconds each instance step may take before it counts as failed."""

    model_config = ConfigDict(extra="forbid")

    collect_resources: int = Field(default=120, ge=10)
    snapshot_previous: int = Field(default=120, ge=10)
    stop_flux: int = Field(default=180, ge=10)
    sync: int = Field(default=3600, ge=30)
    install: int = Field(default=1800, ge=30)
    health_check: int = Field(default=300, ge=10)
    health_check_per_gb: int = Field(default=20, ge=0)
    rollback: int = Field(default=600, ge=30)
    check_instance: int = Field(default=300, ge=10)


class InstanceRoots(BaseModel):
    """Where things live on the instance (SSM document parameters; relocatable for tests)."""

    model_config = ConfigDict(extra="forbid")

    models_root: Annotated[str, Field(pattern=ABS_PATH)] = "/opt/models"
    runtime_root: Annotated[str, Field(pattern=ABS_PATH)] = "/opt/asoba-inference"
    unit_dir: Annotated[str, Field(pattern=ABS_PATH)] = "/etc/systemd/system"
    env_dir: Annotated[str, Field(pattern=ABS_PATH)] = "/etc/asoba-inference"
    profile_dir: Annotated[str, Field(pattern=ABS_PATH)] = "/etc/profile.d"
    state_dir: Annotated[str, Field(pattern=ABS_PATH)] = "/var/lib/asoba-inference"


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance_ids: Annotated[list[Annotated[str, Field(pattern=INSTANCE_ID)]], Field(min_length=1)]
    model_bucket: Annotated[str, Field(pattern=BUCKET_NAME)]
    model_prefix: Annotated[str, Field(pattern=PREFIX)] = ""
    region: Annotated[str, Field(pattern=REGION)] = "us-west-2"
    account: Annotated[str, Field(pattern=r"^[0-9]{12}$")] | None = None
    instance_type: Annotated[str, Field(pattern=r"^[a-z0-9]+\.[a-z0-9]+$")] = "g5.4xlarge"
    flux_service: Annotated[str, Field(pattern=UNIT)] = "flux-api.service"
    thresholds: Thresholds = Field(default_factory=Thresholds)
    poll_interval_seconds: int = Field(default=5, ge=1, le=300)
    step_budgets: StepBudgets = Field(default_factory=StepBudgets)
    validation_rate_minutes: int = Field(default=60, ge=1, le=1440)
    alarm_email: Annotated[str, Field(pattern=r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$")] = ""
    instance_roots: InstanceRoots = Field(default_factory=InstanceRoots)
    base_python: Annotated[str, Field(pattern=ABS_PATH)] = "/usr/bin/python3"
    service_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "ubuntu"

    @field_validator("instance_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        # `-c instance_ids=i-1,i-2` arrives as one string
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("thresholds", "step_budgets", "instance_roots", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


def _coerce_numbers(raw: dict[str, Any]) -> dict[str, Any]:
    # -c poll_interval_seconds=2 arrives as a string
    out = dict(raw)
    for key in ("poll_interval_seconds", "validation_rate_minutes"):
        if isinstance(out.get(key), str) and re.fullmatch(r"[0-9]+", out[key]):
            out[key] = int(out[key])
    return out


def load_config(get_context: Any) -> DeployConfig:
    """Build the config from a `node.try_get_context`-like getter, naming any bad key."""
    raw = {key: get_context(key) for key in CONTEXT_KEYS}
    raw = {key: value for key, value in raw.items() if value is not None}
    try:
        return DeployConfig.model_validate(_coerce_numbers(raw))
    except json.JSONDecodeError as error:
        raise ConfigError(f"context value is not valid JSON: {error}") from None
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(p) for p in item["loc"])
            if item["type"] == "missing":
                problems.append(f"context key '{key}': required (set it in cdk.json or with -c {key}=...)")
            else:
                problems.append(f"context key '{key}': {item['msg']} (got {item.get('input')!r})")
        raise ConfigError("; ".join(problems)) from None
