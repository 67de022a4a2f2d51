"""The scheduled validation: the machine in `"mode": "validate"`, as the EventBridge rule runs it.

moto never fires schedules, so the tests start the execution with the rule's own input
(the stack tests check the rule carries exactly this input)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local.executions import run_execution


def emitted_metrics(output: str) -> dict[str, float]:
    """The CloudWatch EMF records Powertools Metrics printed, by metric name."""
    values: dict[str, float] = {}
    for line in output.splitlines():
        if '"_aws"' not in line:
            continue
        record = json.loads(line)
        for definition in record["_aws"]["CloudWatchMetrics"]:
            for metric in definition["Metrics"]:
                value = record[metric["Name"]]
                values[metric["Name"]] = float(value[-1] if isinstance(value, list) else value)
    return values


def test_validation_passes_on_a_healthy_instance(
    sfn: Any, machine_arn: str, instance: Any, instance_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_execution(sfn, machine_arn, {"mode": "validate", "instance_id": instance_id})

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert "CheckPassed" in result.states_entered
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics["InstanceOnline"] == 1.0
    assert metrics["ValidationPassed"] == 1.0


def test_validation_fails_and_sets_the_alarm_metric_when_offline(
    sfn: Any, machine_arn: str, instance: Any, instance_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    instance.go_offline()
    try:
        result = run_execution(sfn, machine_arn, {"mode": "validate", "instance_id": instance_id})
    finally:
        instance.go_online()

    assert result.status == "FAILED"
    assert result.error == "InstanceUnavailable"
    assert "ConnectionLost" in (result.cause or "")
    metrics = emitted_metrics(capsys.readouterr().out)
    # the alarm watches ValidationPassed < 1 (tests/stack checks the alarm)
    assert metrics["ValidationPassed"] == 0.0
    assert metrics["InstanceOnline"] == 0.0
