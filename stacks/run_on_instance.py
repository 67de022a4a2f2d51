"""The reusable "run an SSM document on the instance" fragment.

    <Step> (send) -> <Step>.Wait -> <Step>.Poll -> <Step>.Finished?   (each Wait: $.command.wait_seconds)
        InProgress -> <Step>.Wait            (the command still runs)
        Resend     -> <Step>.Again -> <Step> (the document ran but asks to be run again,
                                             e.g. the health check while the model loads)
        otherwise  -> <Step>.Result          (copies the outcome to $.steps.<key>)

The step's Lambda answers both actions: `send` starts the command and returns a command
reference with its deadline; `poll` reads the invocation and returns it with `status`,
or raises the step's typed error. Nothing sleeps in a Lambda: waiting is Wait states.
"""

from __future__ import annotations

from aws_cdk import (
    Duration,
)
from aws_cdk import (
    aws_lambda as lambda_,
)
from aws_cdk import (
    aws_stepfunctions as sfn,
)
from aws_cdk import (
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

TRANSIENT_ERRORS = [
    "InvocationDoesNotExist",
    "ThrottlingException",
    "Lambda.TooManyRequestsException",
    "Lambda.ServiceException",
    "Lambda.SdkClientException",
    "Lambda.AWSLambdaException",
    "Lambda.ClientExecutionTimeoutException",
]
# Each Wait reads its seconds from the command: the poll Lambda backs off (core.commands.next_wait),
# so a step at its full budget stays a few hundred events, not budget / interval rounds.
WAIT_SECONDS_PATH = "$.command.wait_seconds"


def invoke(
    scope: Construct,
    name: str,
    function: lambda_.IFunction,
    payload: dict[str, object],
    result_path: str | None,
    *,
    comment: str | None = None,
) -> tasks.LambdaInvoke:
    """A Lambda task whose result is the function's raw payload, with transient retries."""
    task = tasks.LambdaInvoke(
        scope,
        name,
        lambda_function=function,
        payload=sfn.TaskInput.from_object(payload),
        payload_response_only=True,
        retry_on_service_exceptions=False,
        result_path=result_path,
        comment=comment,
    )
    task.add_retry(
        errors=TRANSIENT_ERRORS,
        interval=Duration.seconds(1),
        max_attempts=4,
        backoff_rate=2,
    )
    return task


class RunOnInstance(sfn.StateMachineFragment):
    def __init__(
        self,
        scope: Construct,
        label: str,
        *,
        function: lambda_.IFunction,
        result_key: str,
        poll_seconds: int,
        comment: str,
    ) -> None:
        super().__init__(scope, label)
        send = invoke(
            self,
            label,
            function,
            {"action": "send", "state": sfn.JsonPath.entire_payload},
            "$.command",
            comment=comment,
        )
        # poll_seconds reaches the Lambdas through the settings: the back-off's floor
        wait = sfn.Wait(self, f"{label}.Wait", time=sfn.WaitTime.seconds_path(WAIT_SECONDS_PATH))
        again = sfn.Wait(self, f"{label}.Again", time=sfn.WaitTime.seconds_path(WAIT_SECONDS_PATH))
        poll = invoke(
            self,
            f"{label}.Poll",
            function,
            {"action": "poll", "command": sfn.JsonPath.object_at("$.command")},
            "$.command",
        )
        result = sfn.Pass(
            self, f"{label}.Result", input_path="$.command", result_path=f"$.steps.{result_key}"
        )
        finished = (
            sfn.Choice(self, f"{label}.Finished?")
            .when(sfn.Condition.string_equals("$.command.status", "InProgress"), wait)
            .when(sfn.Condition.string_equals("$.command.status", "Resend"), again)
            .otherwise(result)
        )
        send.next(wait)
        wait.next(poll)
        poll.next(finished)
        again.next(send)
        self._start = send
        self._ends = [result]

    @property
    def start_state(self) -> sfn.State:
        return self._start

    @property
    def end_states(self) -> list[sfn.INextable]:
        return list(self._ends)
