"""The one stack: composes one construct per concern and scopes every permission."""

from __future__ import annotations

import json

from aws_cdk import (
    Acknowledgment,
    ArnFormat,
    CfnOutput,
    Duration,
    RemovalPolicy,
    Stack,
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
from aws_cdk import (
    aws_s3_assets as s3_assets,
)
from constructs import Construct

from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.settings import Settings, StackResources
from asoba_deploy.core.steps import STEPS, Grant
from stacks.command_events import CommandEvents, grant_task_response
from stacks.dashboard import OperatorDashboard
from stacks.documents import InstanceDocuments
from stacks.functions import DeployFunctions
from stacks.instance_tools import s5cmd_binary
from stacks.paths import RUNTIME_DIR
from stacks.schedule import METRICS_NAMESPACE, ValidationSchedule
from stacks.state_machine import DeployStateMachine
from stacks.tables import DeploymentTables

# The idle policy stops the stack's instances; a deployment starts them (scoped to their ARNs).
INSTANCE_STATE_CHANGES = {Grant.STOP_INSTANCES: "StopInstances", Grant.START_INSTANCES: "StartInstances"}


class ModelDeployStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: DeployConfig, **kwargs: object
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.config = config
        state_machine_name = f"{self.stack_name}-deploy"

        documents = InstanceDocuments(self, "Documents")
        missing = sorted({str(s.document) for s in STEPS.values() if s.document} - set(documents.names))
        if missing:
            raise FileNotFoundError(f"ssm_documents/ lacks {', '.join(m + '.yaml' for m in missing)}")
        tables = DeploymentTables(self, "Tables")
        logs_key = self._logs_key()
        runtime_bundle = s3_assets.Asset(
            self,
            "RuntimeBundle",
            path=str(RUNTIME_DIR),
            exclude=["**/__pycache__", "**/*.pyc"],
        )
        # What the documents bring to a fresh instance image before their scripts run.
        s5cmd = s3_assets.Asset(self, "S5cmd", path=str(s5cmd_binary()))
        command_logs = logs.LogGroup(
            self,
            "CommandOutput",
            retention=logs.RetentionDays.THREE_MONTHS,
            encryption_key=logs_key,
            removal_policy=RemovalPolicy.DESTROY,
        )
        settings = Settings(
            deploy=config,
            stack=StackResources(
                documents=documents.names,
                lock_table=tables.lock.table_name,
                ledger_table=tables.ledger.table_name,
                token_table=tables.tokens.table_name,
                activity_table=tables.activity.table_name,
                # https object URLs: what the documents' aws:downloadContent steps read
                runtime_bundle_uri=runtime_bundle.http_url,
                s5cmd_uri=s5cmd.http_url,
                command_log_group=command_logs.log_group_name,
                state_machine_name=state_machine_name,
            ),
        )
        environment = {
            **settings.to_environment(),
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        }
        functions = DeployFunctions(self, "Functions", environment=environment, logs_key=logs_key)
        fn = functions.functions

        model_prefix_arn = f"arn:{self.partition}:s3:::{config.model_bucket}/{config.model_prefix}*"
        bucket_arn = f"arn:{self.partition}:s3:::{config.model_bucket}"
        instance_arns = [
            self.format_arn(service="ec2", resource="instance", resource_name=instance_id)
            for instance_id in config.instance_ids
        ]
        doc_arn = dict(zip(documents.names, documents.arns, strict=True))
        # Each function gets exactly what its registry step names.
        for name, function in fn.items():
            step = STEPS[name]
            role = function.role
            assert role is not None
            if Grant.READ_MODELS in step.grants:
                self._grant_model_read(function, bucket_arn, model_prefix_arn)
            if Grant.SEE_INSTANCES in step.grants:
                self._read_instances(role)
            if step.document is not None:
                self._send_document(role, [*instance_arns, doc_arn[step.document]])
                # its Await keeps the task token and completes it when the command already ended
                grant_task_response(role, tables, ["dynamodb:PutItem", "dynamodb:DeleteItem"])
            if Grant.LOCK_TABLE in step.grants:
                tables.lock.grant_read_write_data(function)
            if Grant.LEDGER_TABLE in step.grants:
                tables.ledger.grant_read_write_data(function)
            if Grant.ACTIVITY_TABLE in step.grants:
                tables.activity.grant_read_write_data(function)
            for grant, action in INSTANCE_STATE_CHANGES.items():
                if grant in step.grants:
                    role.add_to_principal_policy(
                        iam.PolicyStatement(
                            sid=f"{action}OfTheStacksInstances",
                            actions=[f"ec2:{action}"],
                            resources=instance_arns,
                        )
                    )

        # SSM's status-change events complete the waiting steps (stacks/command_events.py).
        self.command_events = CommandEvents(
            self,
            "CommandEvents",
            functions=functions,
            tables=tables,
            document_names=[
                documents.names[str(s.document)] for s in STEPS.values() if s.document and s.has_function
            ],
            instance_ids=list(config.instance_ids),
        )
        machine = DeployStateMachine(
            self,
            "Deployment",
            functions=fn,
            poll_seconds=config.poll_interval_seconds,
            state_machine_name=state_machine_name,
            logs_key=logs_key,
        )
        for name, function in fn.items():
            if Grant.DESCRIBE_EXECUTIONS in STEPS[name].grants:
                self._describe_executions(function, machine.execution_arn_pattern, state_machine_name)
        self._acknowledge_machine_role(machine, fn)

        self.schedule = ValidationSchedule(
            self,
            "Schedule",
            state_machine=machine.state_machine,
            rate_minutes=config.validation_rate_minutes,
            instance_ids=config.instance_ids,
            alarm_email=config.alarm_email,
        )
        self.dashboard = OperatorDashboard(
            self,
            "Dashboard",
            instance_ids=list(config.instance_ids),
            validation_rate_minutes=config.validation_rate_minutes,
        )
        instance_policy = self._instance_policy(
            bucket_arn, model_prefix_arn, [runtime_bundle, s5cmd], command_logs
        )
        # What the deploy-model CLI (and a person in the console) needs to find things.
        for name, value, description in (
            ("StateMachineArn", machine.state_machine.state_machine_arn, "start-execution target"),
            ("LedgerTable", tables.ledger.table_name, "deployment records"),
            ("LockTable", tables.lock.table_name, "per-instance deployment lock"),
            ("ActivityTable", tables.activity.table_name, "per-instance request activity (idle policy)"),
            ("InstanceIds", ",".join(config.instance_ids), "instances this stack deploys to"),
            ("ModelBucket", config.model_bucket, "model bucket"),
            ("DocumentPrefix", f"{self.stack_name}-", "SSM documents are <prefix><file stem>"),
            ("InstanceRoots", config.instance_roots.model_dump_json(), "where things live on the instance"),
            ("FluxService", config.flux_service, "the co-resident service"),
            ("InstanceType", config.instance_type, "for the ledger's cost per hour"),
            (
                "Benchmark",
                json.dumps(
                    {**config.benchmark.model_dump(), "budget_seconds": config.step_budgets.benchmark},
                    sort_keys=True,
                ),
                "what deploy-model bench sends (concurrency, tokens, budget)",
            ),
            ("InstancePolicyArn", instance_policy.managed_policy_arn, "attach to the instance role"),
            ("AlarmTopicArn", self.schedule.topic.topic_arn, "validation alarms"),
            ("CommandLogGroup", command_logs.log_group_name, "SSM command output: long steps' progress"),
        ):
            CfnOutput(self, name, value=value, description=description)
        self.functions = fn
        self.documents = documents
        self.tables = tables
        self.state_machine = machine.state_machine
        self.runtime_bundle = runtime_bundle

    def _logs_key(self) -> kms.Key:
        """The customer key of every log group of the stack (execution data, command output)."""
        key = kms.Key(
            self,
            "LogsKey",
            enable_key_rotation=True,
            description="Encrypts the deployment's log groups",
            removal_policy=RemovalPolicy.DESTROY,
            pending_window=Duration.days(7),
        )
        # CloudWatch Logs encrypts with it on behalf of the account's log groups only.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchLogsEncryptsTheAccountsLogGroups",
                principals=[iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com")],
                actions=[
                    "kms:Encrypt*",
                    "kms:Decrypt*",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:Describe*",
                ],
                resources=["*"],
                conditions={
                    "ArnLike": {"kms:EncryptionContext:aws:logs:arn": self._log_group_arn("*")},
                },
            )
        )
        return key

    def _log_group_arn(self, name: str) -> str:
        return self.format_arn(
            service="logs", resource="log-group", resource_name=name, arn_format=ArnFormat.COLON_RESOURCE_NAME
        )

    def _model_key_decrypt(self) -> iam.PolicyStatement | None:
        """kms:Decrypt on the model bucket's SSE-KMS key, used through S3 only; None without one."""
        if self.config.model_bucket_kms_key_arn is None:
            return None
        return iam.PolicyStatement(
            sid="DecryptModelObjects",
            actions=["kms:Decrypt"],
            resources=[self.config.model_bucket_kms_key_arn],
            conditions={"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}},
        )

    def _grant_model_read(self, function: object, bucket_arn: str, prefix_arn: str) -> None:
        role = function.role  # type: ignore[attr-defined]
        role.add_to_principal_policy(
            iam.PolicyStatement(sid="ReadModelObjects", actions=["s3:GetObject"], resources=[prefix_arn])
        )
        decrypt = self._model_key_decrypt()
        if decrypt is not None:
            role.add_to_principal_policy(decrypt)
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

    def _describe_executions(self, function: lambda_.Function, arn_pattern: str, machine_name: str) -> None:
        role = function.role
        assert role is not None
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="CheckLockHolderStillRuns", actions=["states:DescribeExecution"], resources=[arn_pattern]
            )
        )
        Validations.of(role).acknowledge(
            Acknowledgment(
                id=(
                    "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:"
                    f"{self.config.region}:{self.config.account or '<AWS::AccountId>'}:"
                    f"execution:{machine_name}:*]"
                ),
                reason="Any execution of this state machine may hold the lock",
            )
        )

    def _acknowledge_machine_role(self, machine: DeployStateMachine, fn: dict[str, lambda_.Function]) -> None:
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

    @staticmethod
    def _send_document(role: iam.IRole, resources: list[str]) -> None:
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="SendProjectDocumentsToListedInstances", actions=["ssm:SendCommand"], resources=resources
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="FollowCommands",
                actions=[
                    "ssm:GetCommandInvocation",
                    "ssm:ListCommandInvocations",
                    "ssm:ListCommands",  # a retried send finds the command it already sent
                    "ssm:CancelCommand",
                ],
                resources=["*"],
            )
        )
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
        assets: list[s3_assets.Asset],
        command_logs: logs.LogGroup,
    ) -> iam.ManagedPolicy:
        """What the instance's own role needs; attach it to the instance profile."""
        decrypt = self._model_key_decrypt()
        policy = iam.ManagedPolicy(
            self,
            "InstanceAccess",
            description=(
                "Attach to the GPU instance's role: read models, the runtime bundle, s5cmd; write output"
            ),
            statements=[
                iam.PolicyStatement(
                    actions=["s3:GetObject"],
                    resources=[prefix_arn, *(a.bucket.arn_for_objects(a.s3_object_key) for a in assets)],
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
                # The SSM agent creates the output group of each command that streams (it exists:
                # the call only has to be allowed), then looks it up; on a denial it stops streaming.
                iam.PolicyStatement(
                    sid="AgentCreatesCommandOutputGroup",
                    actions=["logs:CreateLogGroup"],
                    resources=[self._log_group_arn(command_logs.log_group_name), command_logs.log_group_arn],
                ),
                # DescribeLogGroups is authorized on the account's log-group:* pattern, not on one group.
                iam.PolicyStatement(
                    sid="AgentFindsCommandOutputGroup",
                    actions=["logs:DescribeLogGroups"],
                    resources=[self._log_group_arn("*")],
                ),
                *([decrypt] if decrypt is not None else []),
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
            Acknowledgment(
                id=(
                    f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:{self.config.region}:"
                    f"{self.config.account or '<AWS::AccountId>'}:log-group:*]"
                ),
                reason="logs:DescribeLogGroups takes no narrower resource than the account's log groups",
            ),
        )
        return policy
