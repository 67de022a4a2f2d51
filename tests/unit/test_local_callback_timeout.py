"""The local cloud's Step Functions as AWS: a `.waitForTaskToken` task that timed out is over.
Its token answers SendTaskSuccess with TaskTimedOut, and its history holds TaskTimedOut as the
task's last word: no TaskSucceeded written later into the states that followed (moto kept the
token open and, with the stop fix, wrote one; local/cloud.py `_a_timed_out_token_is_refused`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local.cloud import _a_stopped_callback_task_aborts, _a_timed_out_token_is_refused

QUEUE = "tokens"


def _machine(queue_url: str) -> dict[str, Any]:
    # The token goes out by SQS (moto runs SQS in process); the task gives up after a second and
    # its Catch waits long enough for anything the abandoned wait would still write.
    return {
        "StartAt": "Await",
        "States": {
            "Await": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                "Parameters": {"QueueUrl": queue_url, "MessageBody": {"token.$": "$$.Task.Token"}},
                "TimeoutSeconds": 1,
                "Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "AfterTimeout"}],
                "End": True,
            },
            "AfterTimeout": {"Type": "Wait", "Seconds": 4, "Next": "Done"},
            "Done": {"Type": "Succeed"},
        },
    }


@pytest.fixture
def sfn_and_sqs() -> Iterator[tuple[Any, Any]]:
    _a_stopped_callback_task_aborts()
    _a_timed_out_token_is_refused()
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield (
            boto3.client("stepfunctions", region_name="us-west-2"),
            boto3.client("sqs", region_name="us-west-2"),
        )


def _until(check: Any, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def test_a_timed_out_task_refuses_its_token_and_writes_nothing_after(
    sfn_and_sqs: tuple[Any, Any],
) -> None:
    sfn, sqs = sfn_and_sqs
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    machine = sfn.create_state_machine(
        name="await-a-token",
        definition=json.dumps(_machine(queue_url)),
        roleArn="arn:aws:iam::123456789012:role/machine",
    )["stateMachineArn"]
    arn = sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"]

    def history() -> list[str]:
        return [e["type"] for e in sfn.get_execution_history(executionArn=arn)["events"]]

    messages = _until(lambda: sqs.receive_message(QueueUrl=queue_url).get("Messages"))
    token = json.loads(messages[0]["Body"])["token"]

    # When the task's timeout passes with no answer
    _until(lambda: "TaskTimedOut" in history())
    # Then a late answer is refused as Step Functions refuses it
    with pytest.raises(ClientError) as refused:
        sfn.send_task_success(taskToken=token, output=json.dumps({"late": True}))
    assert refused.value.response["Error"]["Code"] == "TaskTimedOut"
    with pytest.raises(ClientError) as beat:
        sfn.send_task_heartbeat(taskToken=token)
    assert beat.value.response["Error"]["Code"] == "TaskTimedOut"

    # And the task's TaskTimedOut is its last event: nothing of it follows in the Wait's events
    _until(lambda: sfn.describe_execution(executionArn=arn)["status"] != "RUNNING")
    assert sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED"
    types = history()
    after = types[types.index("TaskTimedOut") :]
    assert "TaskSucceeded" not in after and "TaskFailed" not in after, types
    assert after[:3] == ["TaskTimedOut", "TaskStateExited", "WaitStateEntered"], types
