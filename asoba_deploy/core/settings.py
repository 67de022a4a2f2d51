"""What every Lambda knows: the deployment's configuration and the stack's resources.

The stack serializes one `Settings` into two environment variables (`to_environment`):
ASOBA_DEPLOY (the context, `DeployConfig`) and ASOBA_STACK (what CloudFormation created).
pydantic-settings reads them back; nothing is configured anywhere else.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from asoba_deploy.core.config import DeployConfig, InstanceRoots, StepBudgets

ENV_PREFIX = "ASOBA_"


class StackResources(BaseModel):
    """Names of what the stack created, known only after synthesis (CloudFormation tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    documents: dict[str, str] = Field(default_factory=dict)  # document stem -> SSM document name
    lock_table: str = ""
    ledger_table: str = ""
    token_table: str = ""  # task tokens of the instance steps waiting for their command's end
    activity_table: str = ""  # per instance: the runtime's request counters and when they last changed
    runtime_bundle_uri: str = ""  # https S3 object URL: what aws:downloadContent reads
    s5cmd_uri: str = ""  # the s5cmd binary the documents bring (stacks/instance_tools.py)
    command_log_group: str = ""
    state_machine_name: str = ""
    catalog_key: str = "catalog.json"  # relative to the model prefix


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    deploy: DeployConfig
    stack: StackResources = Field(default_factory=StackResources)

    def to_environment(self) -> dict[str, str]:
        """The Lambda environment that reads back as this object."""
        return {
            f"{ENV_PREFIX}DEPLOY": self.deploy.model_dump_json(exclude_none=True),
            f"{ENV_PREFIX}STACK": self.stack.model_dump_json(),
        }

    # Shortcuts for what the steps read most.
    @property
    def instance_ids(self) -> list[str]:
        return list(self.deploy.instance_ids)

    @property
    def model_bucket(self) -> str:
        return self.deploy.model_bucket

    @property
    def model_prefix(self) -> str:
        return self.deploy.model_prefix

    @property
    def instance_roots(self) -> InstanceRoots:
        return self.deploy.instance_roots

    @property
    def step_budgets(self) -> StepBudgets:
        return self.deploy.step_budgets

    @property
    def flux_service(self) -> str:
        return self.deploy.flux_service

    @property
    def coexist_port(self) -> int:
        return self.deploy.thresholds.coexist_port

    @property
    def poll_seconds(self) -> int:
        return self.deploy.poll_interval_seconds

    @property
    def safety_net_seconds(self) -> int:
        return self.deploy.safety_net_seconds

    def document(self, stem: str) -> str:
        """The SSM document name the stack gave `ssm_documents/<stem>.yaml`."""
        return self.stack.documents.get(stem, stem)


@lru_cache(maxsize=8)
def _cached(deploy: str, stack: str) -> Settings:
    return Settings()  # type: ignore[call-arg]  # pydantic-settings reads the fields from the environment


def settings() -> Settings:
    """The settings of this invocation's environment (cached per distinct environment)."""
    return _cached(os.environ.get(f"{ENV_PREFIX}DEPLOY", ""), os.environ.get(f"{ENV_PREFIX}STACK", ""))
