"""The Lambda functions, one per registry step: one code asset, one dependency layer, one role each."""

from __future__ import annotations

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

from asoba_deploy.core.steps import STEPS, Step
from stacks.lambda_asset import stage_lambda_asset
from stacks.paths import LAMBDA_LAYER_DIR

RUNTIME = lambda_.Runtime.PYTHON_3_14
LAYER_PYTHON_VERSION = "3.14"  # the Makefile builds build/lambda-layer for this runtime


class DeployFunctions(Construct):
    """Creates the function of every registry step with the same code, layer and environment."""

    def __init__(self, scope: Construct, construct_id: str, *, environment: dict[str, str]) -> None:
        super().__init__(scope, construct_id)
        if not (LAMBDA_LAYER_DIR / "python").is_dir():
            raise FileNotFoundError(
                f"{LAMBDA_LAYER_DIR}/python is missing: run `make lambda-layer` before synth"
            )
        code = lambda_.Code.from_asset(str(stage_lambda_asset()))
        layer = lambda_.LayerVersion(
            self,
            "Dependencies",
            code=lambda_.Code.from_asset(str(LAMBDA_LAYER_DIR)),
            compatible_runtimes=[RUNTIME],
            description="Powertools, pydantic and X-Ray SDK for the deployment functions",
        )
        self.functions: dict[str, lambda_.Function] = {}
        for step in STEPS.values():
            if step.has_function:
                self.functions[step.name] = self._function(step, code, layer, environment)

    def _function(
        self,
        step: Step,
        code: lambda_.Code,
        layer: lambda_.ILayerVersion,
        environment: dict[str, str],
    ) -> lambda_.Function:
        log_group = logs.LogGroup(
            self,
            f"{step.function_id}Logs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            f"{step.function_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{step.description} (deployment function)",
        )
        function = lambda_.Function(
            self,
            step.function_id,
            runtime=RUNTIME,
            handler=step.handler,
            code=code,
            layers=[layer],
            role=role,
            log_group=log_group,
            description=step.description,
            timeout=Duration.seconds(step.timeout_seconds),
            memory_size=step.memory_mb,
            tracing=lambda_.Tracing.ACTIVE,
            environment={**environment, "POWERTOOLS_SERVICE_NAME": step.function_id},
        )
        log_group.grant_write(role)
        Validations.of(role).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions",
            )
        )
        return function
