"""Function configuration, read once from the environment the stack sets."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, field_validator


class InstanceRoots(BaseModel):
    model_config = ConfigDict(extra="ignore")

    models_root: str = "/opt/models"
    runtime_root: str = "/opt/asoba-inference"
    unit_dir: str = "/etc/systemd/system"
    env_dir: str = "/etc/asoba-inference"
    profile_dir: str = "/etc/profile.d"
    state_dir: str = "/var/lib/asoba-inference"


class StepBudgets(BaseModel):
    model_config = ConfigDict(extra="ignore")

    collect_resources: int = 120
    snapshot_previous: int = 120
    stop_flux: int = 180
    sync: int = 3600
    install: int = 1800
    health_check: int = 300
    health_check_per_gb: int = 20
    rollback: int = 600
    check_instance: int = 300


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    instance_ids: list[str] = Field(min_length=1)
    instance_type: str = "g5.4xlarge"
    model_bucket: str
    model_prefix: str = ""
    documents: dict[str, str] = Field(default_factory=dict)
    lock_table: str = ""
    ledger_table: str = ""
    runtime_bundle_uri: str = ""
    command_log_group: str = ""
    instance_roots: InstanceRoots = Field(default_factory=InstanceRoots)
    base_python: str = "/usr/bin/python3"
    step_budgets: StepBudgets = Field(default_factory=StepBudgets)
    poll_seconds: int = 5
    flux_service: str = "flux-api.service"
    service_user: str = "ubuntu"
    coexist_port: int = 8001
    state_machine_name: str = ""

    @field_validator("instance_ids", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(",") if part]
        return value

    @field_validator("documents", "instance_roots", "step_budgets", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        fields = {name: environ[name.upper()] for name in cls.model_fields if name.upper() in environ}
        return cls.model_validate(fields)

    def document(self, stem: str) -> str:
        return self.documents.get(stem, stem)


@lru_cache(maxsize=1)
def _cached(key: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_environ(dict(key))


def settings() -> Settings:
    """The settings of this invocation's environment (cached per distinct environment)."""
    relevant = tuple(sorted((k, v) for k, v in os.environ.items() if k.isupper()))
    return _cached(relevant)
