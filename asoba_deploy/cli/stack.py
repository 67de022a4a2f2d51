"""Find the deployed stack: its CloudFormation outputs name the state machine, tables and documents."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from pydantic import ValidationError

from asoba_deploy.core import steps as registry
from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.contracts import describe_validation_error
from asoba_deploy.core.settings import Settings, StackResources

DEFAULT_STACK = "AsobaModelDeploy"
ENDPOINT_ENV = ("DEPLOY_MODEL_ENDPOINT_URL", "AWS_ENDPOINT_URL")
REQUIRED_OUTPUTS = ("StateMachineArn", "LedgerTable", "LockTable", "InstanceIds")


class CliError(Exception):
    """A failure to report in one line (`error: <message>`) with an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def endpoint_from_env(explicit: str | None) -> str | None:
    """--endpoint-url, else DEPLOY_MODEL_ENDPOINT_URL, else AWS_ENDPOINT_URL, else None (real AWS)."""
    if explicit:
        return explicit
    for name in ENDPOINT_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


@dataclass
class Aws:
    """boto3 clients for one region and, for the local emulator, one endpoint."""

    region: str
    endpoint_url: str | None = None
    _session: Any = None
    _clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def connect(cls, region: str | None, endpoint_url: str | None) -> Aws:
        # botocore reads AWS_DEFAULT_REGION and the profile; AWS_REGION is what Lambda and most SDKs set
        region = region or os.environ.get("AWS_REGION") or None
        session = boto3.Session(region_name=region) if region else boto3.Session()
        chosen = region or session.region_name
        if not chosen:
            raise CliError("no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION", 2)
        return cls(region=chosen, endpoint_url=endpoint_url, _session=session)

    @property
    def is_local(self) -> bool:
        return bool(self.endpoint_url) and any(
            host in str(self.endpoint_url) for host in ("127.0.0.1", "localhost", "[::1]")
        )

    def client(self, service: str) -> Any:
        if service not in self._clients:
            config = Config(
                retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60
            )
            self._clients[service] = self._session.client(
                service, region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        return self._clients[service]


# An older stack without the FluxService output ran the configuration's default.
DEFAULT_FLUX_SERVICE: str = DeployConfig.model_fields["flux_service"].default


@dataclass(frozen=True)
class StackInfo:
    """The outputs of the deployed stack that the CLI works with."""

    name: str
    state_machine_arn: str
    ledger_table: str
    lock_table: str
    instance_ids: tuple[str, ...]
    model_bucket: str = ""
    document_prefix: str = ""
    instance_roots: dict[str, str] = field(default_factory=dict)
    flux_service: str = DEFAULT_FLUX_SERVICE
    instance_type: str = ""
    command_log_group: str = ""  # where the long steps' progress lines stream (optional)
    activity_table: str = ""  # the runtime's request activity per instance (the idle policy's)
    # the Benchmark output: {"concurrency", "max_tokens", "budget_seconds"} (the context's)
    benchmark: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_outputs(cls, name: str, outputs: dict[str, str]) -> StackInfo:
        missing = [key for key in REQUIRED_OUTPUTS if not outputs.get(key)]
        if missing:
            raise CliError(
                f"stack {name} lacks the outputs {', '.join(missing)}: is it this project's stack?"
            )
        roots: dict[str, str] = {}
        if outputs.get("InstanceRoots"):
            try:
                roots = {str(k): str(v) for k, v in json.loads(outputs["InstanceRoots"]).items()}
            except (ValueError, AttributeError):
                raise CliError(f"stack {name}: output InstanceRoots is not a JSON object") from None
        return cls(
            name=name,
            state_machine_arn=outputs["StateMachineArn"],
            ledger_table=outputs["LedgerTable"],
            lock_table=outputs["LockTable"],
            instance_ids=tuple(i for i in outputs["InstanceIds"].split(",") if i),
            model_bucket=outputs.get("ModelBucket", ""),
            document_prefix=outputs.get("DocumentPrefix", f"{name}-"),
            instance_roots=roots,
            flux_service=outputs.get("FluxService") or DEFAULT_FLUX_SERVICE,
            instance_type=outputs.get("InstanceType", ""),
            command_log_group=outputs.get("CommandLogGroup", ""),
            activity_table=outputs.get("ActivityTable", ""),
            benchmark=_json_object(name, outputs, "Benchmark"),
        )

    @classmethod
    def load(cls, aws: Aws, name: str) -> StackInfo:
        from botocore.exceptions import ClientError

        try:
            stacks = aws.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
        except ClientError as error:
            message = error.response.get("Error", {}).get("Message", str(error))
            where = aws.endpoint_url or f"region {aws.region}"
            raise CliError(
                f"cannot read stack {name} ({where}): {message}. Deploy it with `make deploy`, "
                "or pass --stack-name / --region / --endpoint-url"
            ) from None
        outputs = {o["OutputKey"]: str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}
        return cls.from_outputs(name, outputs)

    def choose_instance(self, requested: str | None) -> str:
        if requested:
            if requested not in self.instance_ids:
                raise CliError(
                    f"instance {requested} is not one of this stack's instances "
                    f"({', '.join(self.instance_ids)})",
                    2,
                )
            return requested
        if len(self.instance_ids) != 1:
            raise CliError(
                f"the stack deploys to {len(self.instance_ids)} instances: choose one with --instance-id "
                f"({', '.join(self.instance_ids)})",
                2,
            )
        return self.instance_ids[0]

    def document(self, stem: str) -> str:
        return f"{self.document_prefix}{stem}"

    def settings(self) -> Settings:
        """The stack's outputs as the core's `Settings`, for the registry's document parameters."""
        deploy: dict[str, Any] = {
            "instance_ids": list(self.instance_ids),
            "model_bucket": self.model_bucket,
            "flux_service": self.flux_service,
            "instance_roots": self.instance_roots,
        }
        if self.instance_type:
            deploy["instance_type"] = self.instance_type
        if self.benchmark:
            deploy["benchmark"] = {k: v for k, v in self.benchmark.items() if k != "budget_seconds"}
            if "budget_seconds" in self.benchmark:
                deploy["step_budgets"] = {"benchmark": self.benchmark["budget_seconds"]}
        documents = {
            step.document: self.document(step.document)
            for step in registry.STEPS.values()
            if step.document is not None
        }
        try:
            return Settings(
                deploy=DeployConfig.model_validate(deploy),
                stack=StackResources(
                    documents=documents, lock_table=self.lock_table, ledger_table=self.ledger_table
                ),
            )
        except ValidationError as error:
            problems = describe_validation_error(error)
            raise CliError(f"stack {self.name}: unexpected outputs: {problems}") from None


def _json_object(stack: str, outputs: dict[str, str], key: str) -> dict[str, Any]:
    """An optional output holding a JSON object ({} when the stack has no such output)."""
    if not outputs.get(key):
        return {}
    try:
        value = json.loads(outputs[key])
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise CliError(f"stack {stack}: output {key} is not a JSON object")
    return value
