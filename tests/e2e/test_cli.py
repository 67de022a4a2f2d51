"""The deploy-model console script against the session's emulated stack, as a user runs it.

Each test runs the installed script (or `python -m asoba_deploy.cli.main` from the repository
root when the package is not installed) in a subprocess with DEPLOY_MODEL_ENDPOINT_URL pointing
at the local endpoint. Progress lines name the registry's steps (`done  sync ...`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.sandbox.sandbox import port_open
from tests.conftest import Ports

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def cli(local_cloud: Any, deployed_stack: Any) -> Any:
    script = Path(sys.prefix) / "bin" / "deploy-model"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "asoba_deploy.cli.main"]
    env = {
        **os.environ,
        "DEPLOY_MODEL_ENDPOINT_URL": local_cloud.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": local_cloud.region,
    }

    def run(*args: str, timeout: float = 300) -> Run:
        done = subprocess.run(
            [*command, *args],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    return run


def executions(local_cloud: Any, machine_arn: str) -> int:
    return len(local_cloud.client("stepfunctions").list_executions(stateMachineArn=machine_arn)["executions"])


def test_dry_run_prints_the_plan_table_and_changes_nothing(
    cli: Any, instance: Any, tiny_in_bucket: str, ports: Ports
) -> None:
    # Given the instance as the seed describes it (Flux running)
    before = instance.tree_digest()
    # When the user asks for a dry run
    run = cli(tiny_in_bucket, "--dry-run")
    # Then it succeeds and prints each step, then the plan as a table
    assert run.code == 0, run.err
    assert re.search(r"start\s+plan\b", run.out) and re.search(r"done\s+plan\b", run.out)
    assert f"Plan for {tiny_in_bucket} (dry run: nothing was changed)" in run.out
    assert re.search(rf"^  port / unit\s+{ports.coexist} / asoba-inference.service$", run.out, re.M)
    assert re.search(r"^  resource\s+need\s+total\s+free now\s+available\s+free after\s+fits$", run.out, re.M)
    assert "FITS" in run.out
    assert "\033[" not in run.out  # not a terminal: no colour
    assert "dry run wall time" in run.out
    assert run.err == ""
    # And nothing changed on the instance
    assert instance.tree_digest() == before


def test_deploy_status_history_and_undeploy(
    cli: Any, instance: Any, tiny_in_bucket: str, ports: Ports, local_cloud: Any
) -> None:
    # When the model is deployed
    run = cli(tiny_in_bucket)
    # Then every instance step is printed with its duration, the sync with bytes and rate
    assert run.code == 0, run.err
    for step in (
        "validate-input",
        "acquire-lock",
        "collect-resources",
        "plan",
        "snapshot-previous",
        "sync",
        "install",
        "health-check",
        "benchmark",
    ):
        assert re.search(rf"done\s+{step}\s+\d+\.\d s", run.out), step
    assert re.search(r"done\s+benchmark\s+.*time to first token \d+\.\d{3} s, decode", run.out)
    assert re.search(r"^  benchmark\s+time to first token .*\n\s+\d+ at once: ", run.out, re.M)
    # bytes, time and rate (nothing moved when an earlier test left the model on the instance)
    assert re.search(r"done\s+sync\s+.*\d (?:[KMG]i)?B in .* \(.*B/s\)", run.out), run.out
    assert f"Deployed {tiny_in_bucket} on {instance.instance_id}" in run.out
    assert port_open(ports.coexist)

    # And status shows it, from the ledger
    status = cli("status")
    assert status.code == 0, status.err
    row = next(line for line in status.out.splitlines() if line.startswith(instance.instance_id))
    assert tiny_in_bucket in row and str(ports.coexist) in row and "coexist" in row

    # And history lists the execution as succeeded
    history = cli("history", "--limit", "5")
    assert history.code == 0, history.err
    assert re.search(rf"{tiny_in_bucket}\s+succeeded\s+coexist", history.out)

    # When it is undeployed, with Flux restored
    undeploy = cli("undeploy", "--restore-flux", "--instance-id", instance.instance_id)
    # Then the service is gone and Flux runs
    assert undeploy.code == 0, undeploy.err
    assert "undeployed from" in undeploy.out
    assert "flux-api.service active" in undeploy.out
    deadline = time.monotonic() + 15
    while port_open(ports.coexist) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(ports.coexist)
    assert not (instance.unit_dir / "asoba-inference.service").exists()
    assert port_open(ports.flux)
    # And status no longer reports the model: the undeploy is in the ledger
    after = cli("status")
    row = next(line for line in after.out.splitlines() if line.startswith(instance.instance_id))
    assert tiny_in_bucket not in row


def test_a_failed_execution_is_one_error_line(cli: Any, instance: Any) -> None:
    run = cli("no-such-model")
    assert run.code == 1
    assert run.err.splitlines() == [
        "error: ModelNotFound: model 'no-such-model' not found: nothing under s3://asoba-llm-cache/no-such-model/"
    ]
    assert re.search(r"FAIL\s+validate-input\s", run.out)


def test_bad_input_starts_nothing(cli: Any, local_cloud: Any, deployed_stack: Any) -> None:
    before = executions(local_cloud, deployed_stack.state_machine_arn)
    run = cli("../etc")
    assert run.code == 2
    assert run.err.startswith("error: InvalidInput: model:")
    assert executions(local_cloud, deployed_stack.state_machine_arn) == before


def test_undeploy_is_refused_while_a_deployment_holds_the_lock(
    cli: Any, instance: Any, local_cloud: Any, deployed_stack: Any
) -> None:
    # Given a deployment holds the instance's lock (an execution this CLI cannot see finish)
    table = deployed_stack.physical("TablesLock")
    dynamodb = local_cloud.client("dynamodb")
    holder = f"{deployed_stack.state_machine_arn.replace(':stateMachine:', ':execution:')}:deploy-elsewhere"
    dynamodb.put_item(
        TableName=table,
        Item={
            "instance_id": {"S": instance.instance_id},
            "holder": {"S": holder},
            "model": {"S": "qwen3-14b"},
            "acquired_at": {"N": str(time.time())},
            "expires_at": {"N": str(int(time.time()) + 3600)},
        },
    )
    try:
        before = instance.tree_digest()
        # When undeploy is asked
        run = cli("undeploy", "--instance-id", instance.instance_id)
        # Then it refuses in one line and changes nothing
        assert run.code == 1
        assert run.err.splitlines() == [
            f"error: DeploymentInProgress: instance {instance.instance_id} is being deployed by "
            "deploy-elsewhere (model qwen3-14b); nothing was changed"
        ]
        assert instance.tree_digest() == before
    finally:
        dynamodb.delete_item(TableName=table, Key={"instance_id": {"S": instance.instance_id}})


def test_validate_runs_the_validate_document(cli: Any, instance: Any) -> None:
    run = cli("validate")
    assert re.search(r"done\s+check-instance\s", run.out)
    assert re.search(r"^  check\s+status\s+detail$", run.out, re.M)
    assert re.search(r"^  flux_service\s+pass\s", run.out, re.M)
    assert run.code == 0, run.err
