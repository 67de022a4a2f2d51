"""DynamoDB tables: the per-instance deployment lock, the deployment ledger, the step tokens, the
instances' request activity."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from stacks.checkov_skips import skip_checks

TABLE_CHECKOV_SKIPS = {
    "CKV_AWS_119": (
        "Lock items, deployment records (model names, plans, timings) and step tokens hold no secrets; "
        "encrypted at rest with the AWS owned key"
    ),
}


class DeploymentTables(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        # One item per instance while a deployment holds it; `expires_at` is the TTL that
        # frees an instance whose holder was stopped or timed out.
        self.lock = dynamodb.Table(
            self,
            "Lock",
            partition_key=dynamodb.Attribute(name="instance_id", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expires_at",
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )
        # One item per execution (deploy, dry run, failure), newest last per instance.
        self.ledger = dynamodb.Table(
            self,
            "Ledger",
            partition_key=dynamodb.Attribute(name="instance_id", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="record_key", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.RETAIN,
        )
        # One item per instance step waiting for its command's end (core/completion.py): the
        # Await's task token under "<command id>/<instance id>"; `expires_at` removes leftovers.
        self.tokens = dynamodb.Table(
            self,
            "StepTokens",
            partition_key=dynamodb.Attribute(name="invocation", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expires_at",
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )
        # One item per instance (core/idle.py): the runtime's request counters as the scheduled
        # check last saw them and when they last changed (the idle policy's clock).
        self.activity = dynamodb.Table(
            self,
            "Activity",
            partition_key=dynamodb.Attribute(name="instance_id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )
        for table in (self.lock, self.ledger, self.tokens, self.activity):
            skip_checks(table, TABLE_CHECKOV_SKIPS)
