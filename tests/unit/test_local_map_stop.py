"""The local cloud's Step Functions as AWS: an execution stopped inside an inline Map is ABORTED
(moto's interpreter read it FAILED with States.Runtime; local/cloud.py `_a_stopped_map_aborts`)."""

from __future__ import annotations

import json
import time

import boto3
from moto import mock_aws

from local.cloud import _a_stopped_callback_task_aborts, _a_stopped_map_aborts

WAIT_IN_A_MAP = {
    "StartAt": "EachItem",
    "States": {
        "EachItem": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": "Hold",
                "States": {"Hold": {"Type": "Wait", "Seconds": 30, "End": True}},
            },
            "End": True,
        }
    },
}


def test_an_execution_stopped_inside_a_map_is_aborted() -> None:
    _a_stopped_callback_task_aborts()
    _a_stopped_map_aborts()
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sfn = boto3.client("stepfunctions", region_name="us-west-2")
        machine = sfn.create_state_machine(
            name="wait-in-a-map",
            definition=json.dumps(WAIT_IN_A_MAP),
            roleArn="arn:aws:iam::123456789012:role/machine",
        )["stateMachineArn"]
        arn = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"items": [1, 2]}))[
            "executionArn"
        ]
        # When it is stopped while its iterations wait
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            events = sfn.get_execution_history(executionArn=arn)["events"]
            if any(e["type"] == "WaitStateEntered" for e in events):
                break
            time.sleep(0.05)
        sfn.stop_execution(executionArn=arn, error="Operator", cause="stopped by hand")
        # Then it ends ABORTED, as Step Functions ends it
        while time.monotonic() < deadline:
            status = sfn.describe_execution(executionArn=arn)["status"]
            if status != "RUNNING":
                break
            time.sleep(0.05)
        assert status == "ABORTED"
        types = [e["type"] for e in sfn.get_execution_history(executionArn=arn)["events"]]
        assert "ExecutionAborted" in types and "ExecutionFailed" not in types
