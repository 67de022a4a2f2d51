"""The Lambda functions: one shared code asset, one dependency layer, one role per function."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import (
    Acknowledgment,
    Duration,
    RemovalPolicy,
    Validations,
)
from aws_cdk import (
    aws_iam as iam,
)
from aws_cdk import (
    aws_lambda as lambda_,
)
from aws_cdk import (
    aws_logs as logs,
)
from constructs import Construct

from stacks.paths import LAMBDA_LAYER_DIR, LAMBDAS_DIR

RUNTIME = lambda_.Runtime.PYTHON_3_14
LAYER_PYTHON_VERSION = "3.14"  # the Makefile builds build/lambda-layer for this runtime


@dataclass(frozen=True)
class FunctionSpec:
    construct_id: str
    handler: str
    description: str
    timeout_seconds: int = 30
    memory_mb: int = 256


FUNCTION_SPECS: dict[str, FunctionSpec] = {
    spec.construct_id: spec
    for spec in (
        FunctionSpec("Validate", "handlers.validate.handler", "Parse the input; check model and instance"),
        FunctionSpec("Lock", "handlers.lock.handler", "Acquire or release the per-instance lock"),
        FunctionSpec("CollectResources", "handlers.collect_resources.handler", "Snapshot the instance"),
        FunctionSpec("Plan", "handlers.plan.handler", "Plan the deployment (the dry run)", 60, 512),
        FunctionSpec("SnapshotPrevious", "handlers.snapshot_previous.handler", "Back up what runs now"),
        FunctionSpec("StopFlux", "handlers.stop_flux.handler", "Stop the co-resident service"),
        FunctionSpec("SyncModel", "handlers.sync.handler", "Sync the model from S3 to the instance"),
        FunctionSpec("Install", "handlers.install.handler", "Install and start the inference runtime"),
        FunctionSpec("HealthCheck", "handlers.health_check.handler", "Wait for the runtime to be healthy"),
        FunctionSpec("Rollback", "handlers.rollback.handler", "Restore the previous service and Flux"),
        FunctionSpec("Ledger", "handlers.ledger.handler", "Record the execution in the ledger"),
        FunctionSpec("Validation", "handlers.validation.handler", "Scheduled validation of the instance"),
    )
}


class DeployFunctions(Construct):
    """Creates every function from FUNCTION_SPECS with the same code, layer and environment."""

    def __init__(self, scope: Construct, construct_id: str, *, environment: dict[str, str]) -> None:
        super().__init__(scope, construct_id)
        if not (LAMBDA_LAYER_DIR / "python").is_dir():
            raise FileNotFoundError(
                f"{LAMBDA_LAYER_DIR}/python is missing: run `make lambda-layer` before synth"
            )
        code = lambda_.Code.from_asset(
            str(LAMBDAS_DIR),
            # handlers + core only: the deploy-model CLI (cli/) and its packaging metadata stay out
            exclude=[
                "**/__pycache__",
                "**/*.pyc",
                "requirements.txt",
                *("cli", "cli/**"),
                *("*.egg-info", "*.egg-info/**"),
            ],
        )
        layer = lambda_.LayerVersion(
            self,
            "Dependencies",
            code=lambda_.Code.from_asset(str(LAMBDA_LAYER_DIR)),
            compatible_runtimes=[RUNTIME],
            description="Powertools, pydantic and X-Ray SDK for the deployment functions",
        )
        self.functions: dict[str, lambda_.Function] = {}
        for spec in FUNCTION_SPECS.values():
            self.functions[spec.construct_id] = self._function(spec, code, layer, environment)

    def _function(
        self,
        spec: FunctionSpec,
        code: lambda_.Code,
        layer: lambda_.ILayerVersion,
        environment: dict[str, str],
    ) -> lambda_.Function:
        log_group = logs.LogGroup(
            self,
            f"{spec.construct_id}Logs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            f"{spec.construct_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{spec.description} (deployment function)",
        )
        function = lambda_.Function(
            self,
            spec.construct_id,
            runtime=RUNTIME,
            handler=spec.handler,
            code=code,
            layers=[layer],
            role=role,
            log_group=log_group,
            description=spec.description,
            timeout=Duration.seconds(spec.timeout_seconds),
            memory_size=spec.memory_mb,
            tracing=lambda_.Tracing.ACTIVE,
            environment={**environment, "POWERTOOLS_SERVICE_NAME": spec.construct_id},
        )
        log_group.grant_write(role)
        Validations.of(role).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions",
            )
        )
        return function
