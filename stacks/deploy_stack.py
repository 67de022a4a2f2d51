"""The one stack: composes one construct per concern and scopes every permission."""

from __future__ import annotations

import json

from aws_cdk import (
    Acknowledgment,
    CfnOutput,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import (
    aws_iam as iam,
)
from aws_cdk import (
    aws_logs as logs,
)
from aws_cdk import (
    aws_s3_assets as s3_assets,
)
from constructs import Construct

from stacks.config import DeployConfig
from stacks.documents import InstanceDocuments
from stacks.functions import DeployFunctions
from stacks.paths import RUNTIME_DIR
from stacks.schedule import METRICS_NAMESPACE, ValidationSchedule
from stacks.state_machine import DeployStateMachine
from stacks.tables import DeploymentTables

# Functions that act on the instance through SSM, with the document each one sends.
INSTANCE_STEPS: dict[str, list[str]] = {
    "CollectResources": ["collect-resources"],
    "SnapshotPrevious": ["snapshot-previous"],
    "StopFlux": ["stop-flux"],
    "SyncModel": ["sync"],
    "Install": ["install"],
    "HealthCheck": ["health-check"],
    "Rollback": ["rollback"],
    "Validation": ["validate"],
}
READS_MODELS = ("Validate", "Plan", "Validation")


class ModelDeployStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: DeployConfig, **kwargs: object
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.config = config
        state_machine_name = f"{self.stack_name}-deploy"

        documents = InstanceDocuments(self, "Documents")
        missing = sorted({d for docs in INSTANCE_STEPS.values() for d in docs} - set(documents.names))
        if missing:
            raise FileNotFoundError(f"ssm_documents/ lacks {', '.join(m + '.yaml' for m in missing)}")
        tables = DeploymentTables(self, "Tables")
        runtime_bundle = s3_assets.Asset(
            self,
            "RuntimeBundle",
            path=str(RUNTIME_DIR),
            exclude=["**/__pycache__", "**/*.pyc"],
        )
        command_logs = logs.LogGroup(
            self,
            "CommandOutput",
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=RemovalPolicy.DESTROY,
        )
        thresholds = config.thresholds
        environment = {
            "INSTANCE_IDS": ",".join(config.instance_ids),
            "INSTANCE_TYPE": config.instance_type,
            "MODEL_BUCKET": config.model_bucket,
            "MODEL_PREFIX": config.model_prefix,
            "DOCUMENTS": json.dumps(documents.names, sort_keys=True),
            "LOCK_TABLE": tables.lock.table_name,
            "LEDGER_TABLE": tables.ledger.table_name,
            "RUNTIME_BUNDLE_URI": runtime_bundle.s3_object_url,
            "COMMAND_LOG_GROUP": command_logs.log_group_name,
            "INSTANCE_ROOTS": config.instance_roots.model_dump_json(),
            "BASE_PYTHON": config.base_python,
            "SERVICE_USER": config.service_user,
            "STEP_BUDGETS": config.step_budgets.model_dump_json(),
            "POLL_SECONDS": str(config.poll_interval_seconds),
            "FLUX_SERVICE": config.flux_service,
            # the planner's policy (lambdas/core/policy.py)
            "FLUX_UNIT": config.flux_service,
            "MODELS_ROOT": config.instance_roots.models_root,
            "SMALL_MODEL_MAX_GIB": str(thresholds.small_model_gb),
            "QUANTIZE_ABOVE_GIB": str(thresholds.quantize_above_gpu_gb),
            "COEXIST_PORT": str(thresholds.coexist_port),
            "REPLACE_PORT": str(thresholds.replace_port),
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "STATE_MACHINE_NAME": state_machine_name,
        }
        functions = DeployFunctions(self, "Functions", environment=environment)
        fn = functions.functions

        model_prefix_arn = f"arn:{self.partition}:s3:::{config.model_bucket}/{config.model_prefix}*"
        bucket_arn = f"arn:{self.partition}:s3:::{config.model_bucket}"
        for name in READS_MODELS:
            self._grant_model_read(fn[name], bucket_arn, model_prefix_arn)

        instance_arns = [
            self.format_arn(service="ec2", resource="instance", resource_name=instance_id)
            for instance_id in config.instance_ids
        ]
        doc_arn = dict(zip(documents.names, documents.arns, strict=True))
        for name, docs in INSTANCE_STEPS.items():
            role = fn[name].role
            assert role is not None
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="SendProjectDocumentsToListedInstances",
                    actions=["ssm:SendCommand"],
                    resources=[*instance_arns, *(doc_arn[d] for d in docs)],
                )
            )
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="FollowCommands",
                    actions=["ssm:GetCommandInvocation", "ssm:ListCommandInvocations", "ssm:CancelCommand"],
                    resources=["*"],
                )
            )
            self._read_instances(role)
            Validations.of(role).acknowledge(
                Acknowledgment(
                    id="AwsSolutions-IAM5[Resource::*]",
                    reason=(
                        "GetCommandInvocation/ListCommandInvocations/CancelCommand, "
                        "DescribeInstanceInformation, ec2:DescribeInstances and X-Ray take no "
                        "resource-level permissions; SendCommand is scoped to instances and documents"
                    ),
                )
            )
        validate_role = fn["Validate"].role
        assert validate_role is not None
        self._read_instances(validate_role)

        tables.lock.grant_read_write_data(fn["Lock"])
        tables.ledger.grant_read_write_data(fn["Ledger"])

        machine = DeployStateMachine(
            self,
            "Deployment",
            functions=fn,
            poll_seconds=config.poll_interval_seconds,
            state_machine_name=state_machine_name,
        )
        lock_role = fn["Lock"].role
        assert lock_role is not None
        lock_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="CheckLockHolderStillRuns",
                actions=["states:DescribeExecution"],
                resources=[machine.execution_arn_pattern],
            )
        )
        Validations.of(lock_role).acknowledge(
            Acknowledgment(
                id=(
                    "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:"
                    f"{config.region}:{config.account or '<AWS::AccountId>'}:"
                    f"execution:{state_machine_name}:*]"
                ),
                reason="Any execution of this state machine may hold the lock",
            )
        )
        machine_role = machine.state_machine.role
        Validations.of(machine_role).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray and CloudWatch Logs delivery actions of Step Functions take no resource ARNs",
            )
        )
        for function in fn.values():
            Validations.of(machine_role).acknowledge(
                Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::<{self.get_logical_id(function.node.default_child)}.Arn>:*]",  # type: ignore[arg-type]
                    reason="CDK grants invoke on every version/alias of each step function",
                )
            )

        self.schedule = ValidationSchedule(
            self,
            "Schedule",
            state_machine=machine.state_machine,
            rate_minutes=config.validation_rate_minutes,
            instance_ids=config.instance_ids,
            alarm_email=config.alarm_email,
        )
        instance_policy = self._instance_policy(bucket_arn, model_prefix_arn, runtime_bundle, command_logs)
        # What the deploy-model CLI (and a person in the console) needs to find things.
        for name, value, description in (
            ("StateMachineArn", machine.state_machine.state_machine_arn, "start-execution target"),
            ("LedgerTable", tables.ledger.table_name, "deployment records"),
            ("LockTable", tables.lock.table_name, "per-instance deployment lock"),
            ("InstanceIds", ",".join(config.instance_ids), "instances this stack deploys to"),
            ("ModelBucket", config.model_bucket, "model bucket"),
            ("DocumentPrefix", f"{self.stack_name}-", "SSM documents are <prefix><file stem>"),
            ("InstanceRoots", config.instance_roots.model_dump_json(), "where things live on the instance"),
            ("FluxService", config.flux_service, "the co-resident service"),
            ("InstanceType", config.instance_type, "for the ledger's cost per hour"),
            ("InstancePolicyArn", instance_policy.managed_policy_arn, "attach to the instance role"),
            ("AlarmTopicArn", self.schedule.topic.topic_arn, "validation alarms"),
        ):
            CfnOutput(self, name, value=value, description=description)
        self.functions = fn
        self.documents = documents
        self.tables = tables
        self.state_machine = machine.state_machine
        self.runtime_bundle = runtime_bundle

    def _grant_model_read(self, function: object, bucket_arn: str, prefix_arn: str) -> None:
        role = function.role  # type: ignore[attr-defined]
        role.add_to_principal_policy(
            iam.PolicyStatement(sid="ReadModelObjects", actions=["s3:GetObject"], resources=[prefix_arn])
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ListModelPrefix",
                actions=["s3:ListBucket"],
                resources=[bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self.config.model_prefix}*"]}},
            )
        )
        Validations.of(role).acknowledge(
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{prefix_arn.replace(self.partition, '<AWS::Partition>')}]",
                reason="Models are folders of objects under the configured prefix",
            )
        )

    @staticmethod
    def _read_instances(role: iam.IRole) -> None:
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="SeeInstanceState",
                actions=["ec2:DescribeInstances", "ssm:DescribeInstanceInformation"],
                resources=["*"],
            )
        )

    def _instance_policy(
        self,
        bucket_arn: str,
        prefix_arn: str,
        bundle: s3_assets.Asset,
        command_logs: logs.LogGroup,
    ) -> iam.ManagedPolicy:
        """What the instance's own role needs; attach it to the instance profile."""
        policy = iam.ManagedPolicy(
            self,
            "InstanceAccess",
            description=(
                "Attach to the GPU instance's role: read models and the runtime bundle, write command output"
            ),
            statements=[
                iam.PolicyStatement(
                    actions=["s3:GetObject"],
                    resources=[prefix_arn, bundle.bucket.arn_for_objects(bundle.s3_object_key)],
                ),
                iam.PolicyStatement(
                    actions=["s3:ListBucket"],
                    resources=[bucket_arn],
                    conditions={"StringLike": {"s3:prefix": [f"{self.config.model_prefix}*"]}},
                ),
                iam.PolicyStatement(
                    actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                    resources=[command_logs.log_group_arn, f"{command_logs.log_group_arn}:*"],
                ),
            ],
        )
        Validations.of(policy).acknowledge(
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{prefix_arn.replace(self.partition, '<AWS::Partition>')}]",
                reason="Models are folders of objects under the configured prefix",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::<{self.get_logical_id(command_logs.node.default_child)}.Arn>:*]",  # type: ignore[arg-type]
                reason="Log streams of the command output group are created per command",
            ),
        )
        return policy
