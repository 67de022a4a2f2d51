"""The wake-up of a stopped instance, before a deployment's inspect steps (inside Deploy: a
failure releases the lock and is recorded):

    WakeInstance (start it if stopped; $.wake) -> WakeInstance.Awake?
        awake      -> WakeInstance.Done
        otherwise  -> WakeInstance.Wait ($.wake.wait_seconds) -> WakeInstance

A running, Online instance passes straight through (one call). The wait is a Wait state, never a
sleeping Lambda; WakeInstance raises InstanceUnavailable once its budget is spent.
"""

from __future__ import annotations

from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from asoba_deploy.core.steps import Step
from stacks.run_on_instance import invoke

# as long as the function says: the configured poll interval (seconds on AWS, 1 s here)
WAIT_SECONDS_PATH = "$.wake.wait_seconds"


class WakeInstance(sfn.StateMachineFragment):
    def __init__(self, scope: Construct, step: Step, *, function: lambda_.IFunction) -> None:
        super().__init__(scope, step.label)
        label = step.label
        wake = invoke(
            self,
            label,
            function,
            {"action": "wake", "state": sfn.JsonPath.entire_payload},
            "$.wake",
            comment=step.description,
        )
        done = sfn.Pass(self, f"{label}.Done")
        wait = sfn.Wait(self, f"{label}.Wait", time=sfn.WaitTime.seconds_path(WAIT_SECONDS_PATH))
        awake = (
            sfn.Choice(self, f"{label}.Awake?")
            .when(sfn.Condition.boolean_equals("$.wake.awake", True), done)
            .otherwise(wait)
        )
        wake.next(awake)
        wait.next(wake)
        self._start = wake
        self._ends = [done]

    @property
    def start_state(self) -> sfn.State:
        return self._start

    @property
    def end_states(self) -> list[sfn.INextable]:
        return list(self._ends)
