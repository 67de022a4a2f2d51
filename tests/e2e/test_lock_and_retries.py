"""The lock never outlives its execution, and SSM's not-yet-registered invocations are retried."""

from __future__ import annotations

from typing import Any

from local.executions import run_execution, wait_for_execution
from tests.e2e.helpers import start, wait_until_state_entered


def test_a_stopped_execution_does_not_keep_the_instance_locked(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str
) -> None:
    arn = start(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True}, "stopped-holder")
    wait_until_state_entered(sfn, arn, "CollectResources")
    sfn.stop_execution(executionArn=arn, error="Operator", cause="stopped by hand")
    assert wait_for_execution(sfn, arn).status == "ABORTED"

    # its lock item is still there, but its holder no longer runs: the next execution takes over
    result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True})

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.state_output("AcquireLock")["lock"]["taken_over"] == arn


def test_invocation_not_yet_registered_is_retried(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str
) -> None:
    instance.invocation_delay_s = 2.5
    try:
        result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True})
    finally:
        instance.invocation_delay_s = 0.0

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    # the Await's read is a `.waitForTaskToken` task: its Lambda's error is the task's (TaskFailed)
    retried = [
        e
        for e in result.history
        if (e.get("lambdaFunctionFailedEventDetails") or e.get("taskFailedEventDetails") or {}).get("error")
        == "InvocationDoesNotExist"
    ]
    assert retried, "the Await's read must have met InvocationDoesNotExist and been retried"
