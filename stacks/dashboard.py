"""The operator's CloudWatch dashboard: one row of widgets per instance, over the metrics the
functions emit (names in asoba_deploy/core/metric_names.py; the dimensions are Powertools'
`service`, the emitting function's id, and the instance).

    validation pass/fail (and stopped) | deployments by outcome | deployment duration and
    time to healthy | the benchmark's tokens/s | requests served and idle time | cost per day
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from asoba_deploy.core import metric_names as names
from asoba_deploy.core.steps import Phase, the

WIDGET_WIDTH = 4  # five graphs side by side, then the cost (4 columns): the 24-column grid
DAY = Duration.days(1)


def metric(
    metric_name: str, *, emitter: Phase, instance_id: str, statistic: str, period: Duration, label: str
) -> cloudwatch.Metric:
    """One of the emitted metrics: `emitter` names the phase whose one function emits it."""
    return cloudwatch.Metric(
        namespace=names.NAMESPACE,
        metric_name=metric_name,
        dimensions_map={names.SERVICE: the(emitter).function_id, names.INSTANCE: instance_id},
        statistic=statistic,
        period=period,
        label=label,
    )


class OperatorDashboard(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, instance_ids: list[str], validation_rate_minutes: int
    ) -> None:
        super().__init__(scope, construct_id)
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            default_interval=Duration.days(7),
            period_override=cloudwatch.PeriodOverride.AUTO,
        )
        for instance_id in instance_ids:
            self._row(instance_id, validation_rate_minutes)

    def _row(self, instance_id: str, validation_rate_minutes: int) -> None:
        check = Duration.minutes(validation_rate_minutes)

        def of(
            metric_name: str, emitter: Phase, statistic: str, label: str, period: Duration = check
        ) -> cloudwatch.Metric:
            return metric(
                metric_name,
                emitter=emitter,
                instance_id=instance_id,
                statistic=statistic,
                period=period,
                label=label,
            )

        # each price datum stands for one validation interval of running time
        cost = cloudwatch.MathExpression(
            expression=f"price * {validation_rate_minutes / 60:.6g}",
            using_metrics={
                "price": of(names.INSTANCE_HOURLY_PRICE_USD, Phase.CHECK, "Sum", "hourly price", DAY)
            },
            label="USD per day (running time x on-demand price)",
            period=DAY,
        )
        self.dashboard.add_widgets(
            cloudwatch.TextWidget(markdown=f"## {instance_id}", width=24, height=1),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title=f"Validation {instance_id}",
                left=[
                    of(names.VALIDATION_PASSED, Phase.CHECK, "Minimum", "passed (1) / failed (0)"),
                    of(names.INSTANCE_STOPPED, Phase.CHECK, "Maximum", "stopped (1)"),
                ],
                width=WIDGET_WIDTH,
            ),
            cloudwatch.GraphWidget(
                title=f"Deployments {instance_id}",
                left=[
                    of(names.DEPLOYMENT_SUCCEEDED, Phase.RECORD, "Sum", "succeeded", DAY),
                    of(names.DEPLOYMENT_FAILED, Phase.RECORD, "Sum", "failed", DAY),
                ],
                stacked=True,
                width=WIDGET_WIDTH,
            ),
            cloudwatch.GraphWidget(
                title=f"Deployment duration and time to healthy {instance_id} (s)",
                left=[
                    of(names.DEPLOYMENT_SECONDS, Phase.RECORD, "Maximum", "deployment", DAY),
                    of(names.TIME_TO_HEALTHY_SECONDS, Phase.RECORD, "Maximum", "time to healthy", DAY),
                ],
                width=WIDGET_WIDTH,
            ),
            cloudwatch.GraphWidget(
                title=f"Benchmark {instance_id}",
                left=[
                    of(
                        names.BENCHMARK_DECODE_TOKENS_PER_SECOND,
                        Phase.RECORD,
                        "Maximum",
                        "decode tokens/s (concurrency 1)",
                        DAY,
                    )
                ],
                right=[of(names.BENCHMARK_TTFT_SECONDS, Phase.RECORD, "Maximum", "first token (s)", DAY)],
                width=WIDGET_WIDTH,
            ),
            cloudwatch.GraphWidget(
                title=f"Requests served {instance_id}",
                left=[of(names.REQUESTS_SERVED, Phase.CHECK, "Sum", "requests")],
                right=[of(names.IDLE_SECONDS, Phase.CHECK, "Maximum", "idle (s)")],
                width=WIDGET_WIDTH,
            ),
            cloudwatch.SingleValueWidget(
                title=f"Cost per day {instance_id} (USD)",
                metrics=[cost],
                width=24 - 5 * WIDGET_WIDTH,
            ),
        )
