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
    aws_kms as kms,
)
from aws_cdk import (
    aws_lambda as lambda_,
)
from aws_cdk import (
    aws_logs as logs,
)
from constructs import Construct

from asoba_deploy.core.steps import STEPS, Step
from stacks.checkov_skips import skip_checks
from stacks.lambda_asset import stage_lambda_asset
from stacks.paths import LAMBDA_LAYER_DIR

RUNTIME = lambda_.Runtime.PYTHON_3_13
LAYER_PYTHON_VERSION = "3.13"  # the Makefile builds build/lambda-layer for this runtime

# Why checkov's Lambda checks do not apply to these functions.
FUNCTION_CHECKOV_SKIPS = {
    "CKV_AWS_115": (
        "The only caller is the state machine, bounded by the per-instance lock; reserved "
        "concurrency would take from the account's unreserved pool and fails deploys on low-limit accounts"
    ),
    "CKV_AWS_116": (
        "Invoked synchronously by Step Functions only: a DLQ applies to asynchronous invocations; "
        "failures reach the execution's Retry/Catch"
    ),
    "CKV_AWS_117": (
        "Calls AWS APIs only (S3, SSM, EC2, DynamoDB, Step Functions, CloudWatch) and no VPC resource; "
        "a VPC would need NAT or endpoints for no isolation gained"
    ),
    "CKV_AWS_173": (
        "The environment holds configuration and resource names, no secrets; Lambda encrypts it "
        "at rest with its service key"
    ),
}


class DeployFunctions(Construct):
    """Creates the function of every registry step with the same code, layer and environment."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        environment: dict[str, str],
        logs_key: kms.IKey,
    ) -> None:
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
        self._code, self._layer, self._environment, self._logs_key = code, layer, environment, logs_key
        self.functions: dict[str, lambda_.Function] = {}
        for step in STEPS.values():
            if step.has_function:
                self.functions[step.name] = self._function(step)

    def _function(self, step: Step) -> lambda_.Function:
        return self.function(
            step.function_id,
            handler=step.handler,
            description=step.description,
            timeout_seconds=step.timeout_seconds,
            memory_mb=step.memory_mb,
        )

    def function(
        self, function_id: str, *, handler: str, description: str, timeout_seconds: int, memory_mb: int
    ) -> lambda_.Function:
        """A function with the shared code, layer and environment, its own role and log group
        (the registry steps' and the ones that serve no step, e.g. the command-event completer)."""
        code, layer, environment, logs_key = self._code, self._layer, self._environment, self._logs_key
        log_group = logs.LogGroup(
            self,
            f"{function_id}Logs",
            retention=logs.RetentionDays.ONE_MONTH,
            encryption_key=logs_key,
            removal_policy=RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            f"{function_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{description} (deployment function)",
        )
        function = lambda_.Function(
            self,
            function_id,
            runtime=RUNTIME,
            handler=handler,
            code=code,
            layers=[layer],
            role=role,
            log_group=log_group,
            description=description,
            timeout=Duration.seconds(timeout_seconds),
            memory_size=memory_mb,
            tracing=lambda_.Tracing.ACTIVE,
            environment={**environment, "POWERTOOLS_SERVICE_NAME": function_id},
        )
        log_group.grant_write(role)
        skip_checks(function, FUNCTION_CHECKOV_SKIPS)
        Validations.of(function).acknowledge(
            Acknowledgment(
                id="AwsSolutions-L1",
                reason=(
                    f"Python {LAYER_PYTHON_VERSION}: the newest runtime whose Python the tests have, so the "
                    "asset and layer are imported on the runtime's own Python before deploy"
                ),
            )
        )
        Validations.of(role).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions",
            )
        )
        return function
