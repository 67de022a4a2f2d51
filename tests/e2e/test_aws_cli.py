"""The real aws CLI (awscli from PyPI, in the venv) against the local endpoint.

What a user pastes after `make demo KEEP=1`: start-execution with a model payload, then the
execution history names the states of the synthesized machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

AWS = Path(sys.prefix) / "bin" / "aws"


def aws(endpoint: str, region: str, *args: str) -> Any:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": region,
    }
    env.pop("AWS_SESSION_TOKEN", None)
    done = subprocess.run(
        [str(AWS), "--endpoint-url", endpoint, "--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


@pytest.mark.skipif(not AWS.is_file(), reason="awscli is a dev dependency: make setup installs it")
def test_aws_cli_starts_an_execution_and_reads_its_history(
    local_cloud: Any, deployed_stack: Any, instance: Any, tiny_in_bucket: str
) -> None:
    endpoint, region = local_cloud.endpoint, local_cloud.region
    # When an execution is started with a model payload through the aws CLI
    started = aws(
        endpoint,
        region,
        "stepfunctions",
        "start-execution",
        "--state-machine-arn",
        deployed_stack.state_machine_arn,
        "--name",
        f"aws-cli-{int(time.time() * 1000)}",
        "--input",
        json.dumps({"model": tiny_in_bucket, "dry_run": True}),
    )
    arn = started["executionArn"]
    deadline = time.monotonic() + 120
    while True:
        described = aws(endpoint, region, "stepfunctions", "describe-execution", "--execution-arn", arn)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Then it succeeded with the plan as its output
    assert described["status"] == "SUCCEEDED", described
    assert json.loads(described["output"])["model"] == tiny_in_bucket
    # And the history names the states of the machine, in order
    history = aws(endpoint, region, "stepfunctions", "get-execution-history", "--execution-arn", arn)
    entered = [
        e["stateEnteredEventDetails"]["name"] for e in history["events"] if "stateEnteredEventDetails" in e
    ]
    wanted = [
        "ValidateInput",
        "AcquireLock",
        "CollectResources",
        "Plan",
        "RecordDeployment",
        "ReleaseLock",
        "PlanReady",
    ]
    assert [name for name in entered if name in wanted] == wanted
    assert "Sync" not in entered
