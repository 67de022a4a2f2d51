"""The deployment's configuration: the stack's context schema, defined once.

`cdk.json` (or `cdk synth -c key=value`) is read into `DeployConfig` by the CDK app
(stacks/config.py); the stack hands the same object, serialized, to every Lambda, where
`asoba_deploy.core.settings.Settings` reads it back. No default here is written anywhere else.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RUNTIME_UNIT = "asoba-inference.service"  # the seed's unit name, fixed

INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"
BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
PREFIX = r"^$|^[A-Za-z0-9._/-]{1,200}/$"
REGION = r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$"
UNIT = r"^[A-Za-z0-9@._-]{1,100}\.service$"
ABS_PATH = r"^/[A-Za-z0-9._/-]{0,200}$"
# A key ARN (single- or multi-Region), not an alias: IAM authorizes kms:Decrypt on the key's ARN.
KMS_KEY_ARN = (
    r"^arn:aws(-cn|-us-gov)?:kms:[a-z]{2}(-gov)?-[a-z]+-[0-9]:[0-9]{12}:key/"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)


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
    # evict: the least recently used resident models stopped (core.residents)
    evict: int = Field(default=180, ge=10)
    # switch: the router pointed at the new unit, the old one drained (bounded) and stopped
    switch: int = Field(default=300, ge=60)
    sync: int = Field(default=3600, ge=30)
    install: int = Field(default=1800, ge=30)
    # start-service: waiting for this execution's sync marker (normally there already) + restart
    start_service: int = Field(default=300, ge=30)
    health_check: int = Field(default=300, ge=10)
    health_check_per_gb: int = Field(default=20, ge=0)
    rollback: int = Field(default=600, ge=30)
    check_instance: int = Field(default=300, ge=10)
    # wake-instance: a stopped instance started, until it runs and its SSM agent is Online
    wake_instance: int = Field(default=600, ge=10)
    # the benchmark after the health check (a few short requests; never fails the deployment)
    benchmark: int = Field(default=120, ge=10)


class Serving(BaseModel):
    """How the deployed runtime serves: the concurrency it is sized for."""

    model_config = ConfigDict(extra="forbid")

    # Sequences generated together (vLLM's max_num_seqs, the transformers engine's batch): the
    # plan's KV reserve (context_tokens) is shared by them.
    max_num_seqs: int = Field(default=8, ge=1, le=256)
    # Requests allowed to wait behind the running ones before the service answers 503.
    queue_size: int = Field(default=8, ge=0, le=4096)
    # The plan names vLLM only where collect-resources finds it importable by the runtime's
    # Python: install does not download it (its CUDA wheel pins a torch of its own, which would
    # replace the instance's).


InstanceType = Annotated[str, Field(pattern=r"^[a-z0-9]+\.[a-z0-9]+$")]


class Benchmark(BaseModel):
    """The benchmark after a deployment (ssm_documents/benchmark.yaml): short, bounded requests
    to the runtime's /v1/completions, at concurrency 1 and at `concurrency`."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=4, ge=2, le=64)
    max_tokens: int = Field(default=32, ge=2, le=1024)


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
    """Every context key the stack reads (cdk.json \"context\")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_ids: Annotated[list[Annotated[str, Field(pattern=INSTANCE_ID)]], Field(min_length=1)]
    model_bucket: Annotated[str, Field(pattern=BUCKET_NAME)]
    model_prefix: Annotated[str, Field(pattern=PREFIX)] = ""
    # The bucket's SSE-KMS key: every principal that reads models gets kms:Decrypt on it.
    model_bucket_kms_key_arn: Annotated[str, Field(pattern=KMS_KEY_ARN)] | None = None
    region: Annotated[str, Field(pattern=REGION)] = "us-west-2"
    account: Annotated[str, Field(pattern=r"^[0-9]{12}$")] | None = None
    instance_type: Annotated[str, Field(pattern=r"^[a-z0-9]+\.[a-z0-9]+$")] = "g5.4xlarge"
    flux_service: Annotated[str, Field(pattern=UNIT)] = "flux-api.service"
    thresholds: Thresholds = Field(default_factory=Thresholds)
    poll_interval_seconds: int = Field(default=5, ge=1, le=300)
    # The event-driven steps' safety net: an instance step that heard no SSM status-change event
    # reads its invocation once every this many seconds (a lost event costs at most one round);
    # 15 min keeps a step that runs an hour under 50 history events (bench/orchestration_lag.py).
    safety_net_seconds: int = Field(default=900, ge=1, le=3600)
    step_budgets: StepBudgets = Field(default_factory=StepBudgets)
    validation_rate_minutes: int = Field(default=60, ge=1, le=1440)
    alarm_email: Annotated[str, Field(pattern=r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$")] = ""
    instance_roots: InstanceRoots = Field(default_factory=InstanceRoots)
    base_python: Annotated[str, Field(pattern=ABS_PATH)] = "/usr/bin/python3"
    service_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "ubuntu"
    serving: Serving = Field(default_factory=Serving)
    benchmark: Benchmark = Field(default_factory=Benchmark)
    # On-demand USD per hour by instance type, over core.cost's table (e.g. a negotiated rate)
    instance_prices: dict[InstanceType, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    # Candidate models roots, in order of preference when their measured rates tie (e.g. the
    # NVMe instance store's mount first, then the EBS root): collect-resources measures each and
    # the plan picks the fastest with room. Empty: instance_roots.models_root alone.
    models_roots: Annotated[list[Annotated[str, Field(pattern=ABS_PATH)]], Field(max_length=8)] = Field(
        default_factory=list
    )
    # The instance's sustained network rate to S3, for the plan's time_to_healthy: a g5.4xlarge
    # sustains 10 Gbps ("up to 25" is its burst; about 5 Gbps through an internet gateway rather
    # than an S3 gateway endpoint).
    link_gbps: float = Field(default=10.0, gt=0, le=400)
    # One instance step's own cost beyond its script, for the plan's time_to_healthy: SSM's
    # delivery and its completion event (about 1 s on AWS, whose agent picks a command up through
    # its message service; 0.2-0.9 s measured on the local cloud).
    step_overhead_seconds: float = Field(default=1.0, ge=0, le=60)
    # Where the runtime loads the weights from (core.loading): auto lets the plan choose stream
    # (from S3 into memory) or disk (sync, then load); stream or disk forces that one.
    load_from: Literal["auto", "stream", "disk"] = "auto"
    # The idle policy (asoba_deploy.core.idle): the scheduled check stops an instance whose runtime
    # served no request for this many minutes and that no deployment holds. None: off. A fraction
    # of a minute is accepted (the tests' short setting).
    idle_stop_minutes: float | None = Field(default=None, gt=0, le=43200)

    @property
    def candidate_models_roots(self) -> list[str]:
        """The roots collect-resources measures: models_roots, else the models root alone."""
        return list(self.models_roots) or [self.instance_roots.models_root]

    @field_validator("instance_ids", "models_roots", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        # `-c instance_ids=i-1,i-2` (or models_roots=/a,/b) arrives as one string
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("thresholds", "step_budgets", "instance_roots", "serving", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value
