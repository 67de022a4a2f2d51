"""Scheduled validation: an EventBridge rule runs the machine in validate mode; an alarm
on the metrics the validation publishes notifies an SNS topic."""

from __future__ import annotations

from aws_cdk import (
    Duration,
)
from aws_cdk import (
    aws_cloudwatch as cloudwatch,
)
from aws_cdk import (
    aws_cloudwatch_actions as cw_actions,
)
from aws_cdk import (
    aws_events as events,
)
from aws_cdk import (
    aws_events_targets as targets,
)
from aws_cdk import (
    aws_iam as iam,
)
from aws_cdk import (
    aws_kms as kms,
)
from aws_cdk import (
    aws_sns as sns,
)
from aws_cdk import (
    aws_sns_subscriptions as subscriptions,
)
from aws_cdk import (
    aws_stepfunctions as sfn,
)
from constructs import Construct

from asoba_deploy.core import metric_names
from asoba_deploy.core.steps import Phase, the

METRICS_NAMESPACE = metric_names.NAMESPACE


class ValidationSchedule(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        state_machine: sfn.IStateMachine,
        rate_minutes: int,
        instance_ids: list[str],
        alarm_email: str,
    ) -> None:
        super().__init__(scope, construct_id)
        key = kms.Key(self, "TopicKey", enable_key_rotation=True, description="Encrypts validation alarms")
        self.topic = sns.Topic(self, "Alarms", master_key=key, enforce_ssl=True)
        key.grant_encrypt_decrypt(iam.ServicePrincipal("cloudwatch.amazonaws.com"))
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))

        self.rules: list[events.Rule] = []
        self.alarms: list[cloudwatch.Alarm] = []
        for index, instance_id in enumerate(instance_ids):
            rule = events.Rule(
                self,
                f"Every{rate_minutes}Minutes{index}",
                schedule=events.Schedule.rate(Duration.minutes(rate_minutes)),
                description=f"Validate {instance_id} every {rate_minutes} minutes",
            )
            rule.add_target(
                targets.SfnStateMachine(
                    state_machine,
                    input=events.RuleTargetInput.from_object(
                        {"mode": "validate", "instance_id": instance_id}
                    ),
                )
            )
            self.rules.append(rule)

            # Missing data breaches: a validation that never reports is as bad as a failed one. An
            # instance the check found stopped (the idle policy's doing) reports InstanceStopped
            # instead, which counts as passed. The dimensions are the ones the check function emits.
            def check_metric(name: str, statistic: str, instance_id: str = instance_id) -> cloudwatch.Metric:
                return cloudwatch.Metric(
                    namespace=METRICS_NAMESPACE,
                    metric_name=name,
                    dimensions_map={
                        metric_names.SERVICE: the(Phase.CHECK).function_id,
                        metric_names.INSTANCE: instance_id,
                    },
                    statistic=statistic,
                    period=Duration.minutes(rate_minutes),
                )

            alarm = cloudwatch.Alarm(
                self,
                f"ValidationFailing{index}",
                alarm_description=f"Scheduled validation of {instance_id} failed or did not report",
                metric=cloudwatch.MathExpression(
                    expression="MAX([passed, stopped])",
                    using_metrics={
                        "passed": check_metric(metric_names.VALIDATION_PASSED, "Minimum"),
                        "stopped": check_metric(metric_names.INSTANCE_STOPPED, "Maximum"),
                    },
                    label="validation passed or instance stopped",
                    period=Duration.minutes(rate_minutes),
                ),
                threshold=1,
                comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            )
            alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
            self.alarms.append(alarm)
