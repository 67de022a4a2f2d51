"""SSM's status-change events -> the completer Lambda -> the waiting instance step.

SSM publishes an "EC2 Command Invocation Status-change Notification" event to EventBridge on
every invocation status change. The rule routes the terminal ones of this stack's documents
on its instances to the completer (lambdas/handlers/command_events.py), which completes the
task token the step's `<Step>.Await` stored (core/completion.py).
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Duration, Validations
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from constructs import Construct

from asoba_deploy.core.completion import DETAIL_TYPE, SOURCE, TERMINAL_STATUSES
from stacks.checkov_skips import skip_checks
from stacks.functions import DeployFunctions
from stacks.tables import DeploymentTables

COMPLETER_ID = "CommandEvents"
COMPLETER_HANDLER = "handlers.command_events.handler"
# Task tokens are not resources IAM can name: the Step Functions service authorization reference
# lists no resource type for SendTaskSuccess/SendTaskFailure.
TASK_RESPONSE_ACTIONS = ["states:SendTaskSuccess", "states:SendTaskFailure"]


def grant_task_response(role: iam.IRole, tables: DeploymentTables, table_actions: list[str]) -> None:
    """What a token completer needs: its token-table actions and SendTaskSuccess/Failure."""
    role.add_to_principal_policy(
        iam.PolicyStatement(sid="StepTokens", actions=table_actions, resources=[tables.tokens.table_arn])
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(sid="CompleteWaitingStep", actions=TASK_RESPONSE_ACTIONS, resources=["*"])
    )
    Validations.of(role).acknowledge(
        Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason=(
                "states:SendTaskSuccess/SendTaskFailure take no resource-level permissions (a task token "
                "names the task); GetCommandInvocation and X-Ray neither"
            ),
        )
    )


class CommandEvents(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: DeployFunctions,
        tables: DeploymentTables,
        document_names: list[str],
        instance_ids: list[str],
    ) -> None:
        super().__init__(scope, construct_id)
        self.function = functions.function(
            COMPLETER_ID,
            handler=COMPLETER_HANDLER,
            description="Complete the instance step whose SSM command ended (status-change event)",
            timeout_seconds=30,
            memory_mb=256,
        )
        skip_checks(
            self.function,
            {
                "CKV_AWS_116": (
                    "Invoked asynchronously by EventBridge: an undelivered completion is recovered by the "
                    "step's safety net (its Await reads the invocation again), so a DLQ would hold nothing "
                    "to act on"
                ),
            },
        )
        role = self.function.role
        assert role is not None
        grant_task_response(role, tables, ["dynamodb:GetItem", "dynamodb:DeleteItem"])
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadEndedInvocation", actions=["ssm:GetCommandInvocation"], resources=["*"]
            )
        )
        self.rule = events.Rule(
            self,
            "CommandEnded",
            description="An SSM command of this stack ended on one of its instances",
            event_pattern=events.EventPattern(
                source=[SOURCE],
                detail_type=[DETAIL_TYPE],
                detail={
                    "status": list(TERMINAL_STATUSES),
                    "document-name": document_names,
                    "instance-id": instance_ids,
                },
            ),
        )
        # LambdaFunction adds the function's resource policy for events.amazonaws.com on this rule
        self.rule.add_target(
            targets.LambdaFunction(
                self.function,
                retry_attempts=2,
                max_event_age=Duration.minutes(15),
            )
        )
