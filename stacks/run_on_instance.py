"""The reusable "run an SSM document on the instance" fragment, event-driven.

    <Step> (send) -> <Step>.Await -> <Step>.Finished?
        Resend     -> <Step>.Again -> <Step>  (the document ran but asks to be run again: the
                                              health check whose budget outlasts one command)
        otherwise  -> <Step>.Result           (copies the outcome to $.steps.<key>)
    <Step>.Await: States.Timeout -> <Step>.Rearm -> <Step>.Await   (the safety net)

The step's Lambda answers `send` (starts the command, returns its reference with its deadline)
and `await`: a `lambda:invoke.waitForTaskToken` task that keeps its token under the command's
invocation (core/completion.py) and reads the invocation once. SSM's status-change event
reaches the completer (stacks/command_events.py), which reads the invocation with the step's
own poll logic and completes the token: the command object on success, the typed error's
name and message on failure, so Retry/Catch on error names work as with polling. A lost event
ends the round at its timeout ($.command.await_seconds, the safety net); the next round reads
again. Nothing sleeps in a Lambda and nothing polls on a fixed interval.
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
# The Again wait before a resend (core.commands.next_wait) and each Await round's timeout.
WAIT_SECONDS_PATH = "$.command.wait_seconds"
AWAIT_SECONDS_PATH = "$.command.await_seconds"


def invoke(
    scope: Construct,
    name: str,
    function: lambda_.IFunction,
    payload: dict[str, object],
    result_path: str | None,
    *,
    comment: str | None = None,
    wait_for_token: bool = False,
) -> tasks.LambdaInvoke:
    """A Lambda task whose result is the function's raw payload (or, `wait_for_token`, what its
    task token is completed with, waiting $.command.await_seconds), with transient retries."""
    if wait_for_token:
        task = tasks.LambdaInvoke(
            scope,
            name,
            lambda_function=function,
            payload=sfn.TaskInput.from_object(payload),
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            retry_on_service_exceptions=False,
            result_path=result_path,
            comment=comment,
            task_timeout=sfn.Timeout.at(AWAIT_SECONDS_PATH),
        )
    else:
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
        # poll_seconds reaches the Lambdas through the settings: the floor of the Again wait
        wait_for_end = invoke(
            self,
            f"{label}.Await",
            function,
            {
                "action": "await",
                "command": sfn.JsonPath.object_at("$.command"),
                "token": sfn.JsonPath.task_token,
            },
            "$.command",
            wait_for_token=True,
        )
        # A round without an event (lost, or the command still runs): enter Await again, which
        # reads the invocation once more. $.command stays as it was (the Catch discards the error).
        # Through a Pass: moto's interpreter does not follow a Catch back to its own state.
        rearm = sfn.Pass(self, f"{label}.Rearm")
        wait_for_end.add_catch(rearm, errors=["States.Timeout"], result_path=sfn.JsonPath.DISCARD)
        rearm.next(wait_for_end)
        again = sfn.Wait(self, f"{label}.Again", time=sfn.WaitTime.seconds_path(WAIT_SECONDS_PATH))
        result = sfn.Pass(
            self, f"{label}.Result", input_path="$.command", result_path=f"$.steps.{result_key}"
        )
        finished = (
            sfn.Choice(self, f"{label}.Finished?")
            .when(sfn.Condition.string_equals("$.command.status", "Resend"), again)
            .otherwise(result)
        )
        send.next(wait_for_end)
        wait_for_end.next(finished)
        again.next(send)
        self._start = send
        self._ends = [result]

    @property
    def start_state(self) -> sfn.State:
        return self._start

    @property
    def end_states(self) -> list[sfn.INextable]:
        return list(self._ends)
