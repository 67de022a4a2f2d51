"""A fleet rollout through the synthesized machine: three sandboxed instances, one execution.

The stack's first instance is the session's sandbox; the second and third are sandboxes on hosts
of their own (local/sandbox/own_host.py: their own network and root folders, as separate machines
have), so three runtimes on the stack's one port and roots run side by side.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from asoba_deploy.core.rollout import MAX_FLEET
from local.environment import attach_instance_role
from local.executions import ExecutionResult, run_execution
from local.limits import HISTORY_EVENTS
from local.sandbox.own_host import OwnHost, available
from local.sandbox.sandbox import Sandbox, port_open
from tests.conftest import Ports
from tests.e2e.conftest import FLUX_UNIT, RUNTIME_UNIT, reset_instance
from tests.e2e.test_cli import PROJECT_ROOT, Run

pytestmark = pytest.mark.skipif(not available(), reason="needs network and mount namespaces (root)")


class Member:
    """One instance of the fleet, seen from the test: its sandbox and how to reach its ports."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.instance_id = box.instance_id

    def status(self, port: int) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{port}/status"
        try:
            if self.box.own_host is not None:
                return dict(json.loads(self.box.own_host.get(url)))
            import urllib.request

            with urllib.request.urlopen(url, timeout=5) as response:
                return dict(json.loads(response.read()))
        except Exception:
            return None

    def port_open(self, port: int) -> bool:
        host = self.box.own_host
        return host.port_open(port) if host is not None else port_open(port)

    def runs(self, unit: str) -> bool:
        return bool(self.box.unit_state(unit).get("ActiveState") == "active")

    def reset(self, ports: Ports) -> None:
        if self.box.own_host is None:
            reset_instance(self.box, ports)
            return
        box = self.box
        if self.runs(RUNTIME_UNIT):
            box.systemctl("stop", RUNTIME_UNIT, check=False)
        for path in (box.unit_dir / RUNTIME_UNIT, box.env_dir / "env"):
            path.unlink(missing_ok=True)
        box.systemctl("daemon-reload", check=False)
        box.set_gpu_claim(FLUX_UNIT, 4096)
        box.go_online()
        if not self.port_open(ports.flux):
            box.systemctl("start", FLUX_UNIT)
            box.own_host.wait_for_port(ports.flux)  # type: ignore[union-attr]
        deadline = time.monotonic() + 15
        while self.port_open(ports.coexist) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def others(
    local_cloud: Any,
    deployed_stack: Any,
    sandbox: Sandbox,
    second_instance_id: str,
    third_instance_id: str,
    ports: Ports,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Member]]:
    """The second and third instances, each on a host of its own whose root folder is the one
    the stack names (the first sandbox's)."""
    members: list[Member] = []
    hosts: list[OwnHost] = []
    try:
        for instance_id in (second_instance_id, third_instance_id):
            root = tmp_path_factory.mktemp(f"fleet-{instance_id}")
            box = Sandbox(root, instance_id, gpu=True, endpoint_url=local_cloud.endpoint)
            members.append(Member(box))
            host = OwnHost(box.root, sandbox.root, local_cloud.port)
            hosts.append(host)
            box.own_host = host
            attach_instance_role(local_cloud, box, deployed_stack.outputs["InstancePolicyArn"])
            box.install_fake_flux(ports.flux, start=False)
            box.systemctl("start", FLUX_UNIT)
            host.wait_for_port(ports.flux)
        yield members
    finally:
        for member in members:
            member.box.close()
        for host in hosts:
            host.close()


@pytest.fixture
def fleet(instance: Sandbox, others: list[Member], ports: Ports) -> Iterator[list[Member]]:
    members = [Member(instance), *others]
    for member in others:
        member.reset(ports)
    yield members
    for member in others:
        member.reset(ports)


@pytest.fixture
def install_fails_on(ports: Ports) -> Iterator[Any]:
    """A fault on one instance only: where its install downloads the runtime bundle is a file,
    so that instance's install step fails (its sync, which fetches elsewhere, does not)."""
    broken: list[Sandbox] = []

    def _break(member: Member) -> None:
        downloads = member.box.runtime_root / ".downloads"
        if downloads.is_dir():
            import shutil

            shutil.rmtree(downloads)
        downloads.parent.mkdir(parents=True, exist_ok=True)
        downloads.write_text("not a folder\n")
        broken.append(member.box)

    yield _break
    for box in broken:
        (box.runtime_root / ".downloads").unlink(missing_ok=True)


def ledger_records(
    local_cloud: Any, deployed_stack: Any, instance_id: str, execution: str
) -> list[dict[str, Any]]:
    lam = local_cloud.client("lambda")
    config = lam.get_function_configuration(FunctionName=deployed_stack.functions["Record"])
    table = json.loads(config["Environment"]["Variables"]["ASOBA_STACK"])["ledger_table"]
    items = local_cloud.client("dynamodb").query(
        TableName=table,
        KeyConditionExpression="instance_id = :id",
        ExpressionAttributeValues={":id": {"S": instance_id}},
    )["Items"]
    records = [json.loads(item["record"]["S"]) for item in items]
    return [r for r in records if r["execution"] == execution]


def most_at_once(result: ExecutionResult, state: str) -> int:
    """The most iterations inside `state` at the same time, from the history's enter/exit events."""
    level = most = 0
    for event in result.history:
        if event.get("stateEnteredEventDetails", {}).get("name") == state:
            level += 1
            most = max(most, level)
        elif event.get("stateExitedEventDetails", {}).get("name") == state:
            level -= 1
    return most


def rows_by_instance(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["instance_id"]: row for row in rows}


def test_a_rollout_at_concurrency_two_deploys_every_instance(
    sfn: Any,
    machine_arn: str,
    fleet: list[Member],
    tiny_in_bucket: str,
    ports: Ports,
    local_cloud: Any,
    deployed_stack: Any,
) -> None:
    ids = [m.instance_id for m in fleet]
    # When one execution rolls the model out to three instances, two at a time
    result = run_execution(
        sfn, machine_arn, {"model": tiny_in_bucket, "instances": ids, "max_concurrency": 2}, timeout=900
    )
    # Then it succeeds with a row per instance, each deployed, healthy and in the ledger
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    summary = result.output
    assert (summary["outcome"], summary["counts"], summary["max_concurrency"]) == (
        "succeeded",
        {"succeeded": 3},
        2,
    )
    rows = rows_by_instance(summary["rows"])
    assert list(rows) == ids
    for member in fleet:
        row = rows[member.instance_id]
        assert row["outcome"] == "succeeded" and row["plan"]["fits"] is True, row
        assert row["steps"]["health_check"] is not None and row["endpoints"], row
        status = member.status(ports.coexist)
        assert status is not None and status["status"] == "healthy", (member.instance_id, status)
        (record,) = ledger_records(local_cloud, deployed_stack, member.instance_id, result.arn)
        assert record["outcome"] == "succeeded"
    # never more than two instances at once; the per-instance states ran once per instance
    assert most_at_once(result, "Instance") <= 2
    assert result.states_entered.count("HealthCheck") >= 3
    assert result.states_entered.count("AcquireLock") == 3
    # the history budget (25,000 events, inline Map iterations included) holds a fleet of the
    # contract's largest size at this rate of events per instance
    per_instance = len(result.history) / len(ids)
    print(f"history: {len(result.history)} events for {len(ids)} instances ({per_instance:.0f} each)")
    assert per_instance * MAX_FLEET < HISTORY_EVENTS, per_instance


def test_past_the_tolerance_no_further_instance_starts(
    sfn: Any,
    machine_arn: str,
    fleet: list[Member],
    tiny_in_bucket: str,
    ports: Ports,
    local_cloud: Any,
    deployed_stack: Any,
    install_fails_on: Any,
) -> None:
    first, failing, last = fleet
    install_fails_on(failing)
    ids = [m.instance_id for m in fleet]
    # When the second instance fails, one at a time, with no failure tolerated
    result = run_execution(
        sfn, machine_arn, {"model": tiny_in_bucket, "instances": ids, "tolerated_failures": 0}, timeout=900
    )
    # Then the rollout fails and its cause names what happened on each instance
    assert result.status == "FAILED"
    assert result.error == "RolloutFailed"
    cause = result.cause or ""
    assert f"{first.instance_id}: succeeded" in cause, cause
    assert f"{failing.instance_id}: failed (InstallFailed)" in cause, cause
    assert f"{last.instance_id}: not-started" in cause, cause
    summary = result.state_output("SummarizeRollout")["summary"]
    rows = rows_by_instance(summary["rows"])
    assert rows[failing.instance_id]["error"] == "InstallFailed"
    assert rows[last.instance_id]["outcome"] == "not-started"
    # the first stays on the new model; the failed one was rolled back to Flux alone
    assert (first.status(ports.coexist) or {}).get("status") == "healthy"
    assert "RollbackInstance" in result.states_entered
    assert failing.runs(FLUX_UNIT) and failing.port_open(ports.flux)
    assert not failing.runs(RUNTIME_UNIT)
    (failed_record,) = ledger_records(local_cloud, deployed_stack, failing.instance_id, result.arn)
    assert failed_record["outcome"] == "failed"
    # the last was never touched: no lock taken, no record, no runtime
    assert result.states_entered.count("AcquireLock") == 2
    assert ledger_records(local_cloud, deployed_stack, last.instance_id, result.arn) == []
    assert not last.runs(RUNTIME_UNIT) and not (last.box.unit_dir / RUNTIME_UNIT).exists()


def test_within_the_tolerance_the_others_succeed(
    sfn: Any,
    machine_arn: str,
    fleet: list[Member],
    tiny_in_bucket: str,
    ports: Ports,
    install_fails_on: Any,
) -> None:
    first, failing, last = fleet
    install_fails_on(failing)
    ids = [m.instance_id for m in fleet]
    result = run_execution(
        sfn, machine_arn, {"model": tiny_in_bucket, "instances": ids, "tolerated_failures": 1}, timeout=900
    )
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    summary = result.output
    assert summary["outcome"] == "succeeded"
    assert summary["counts"] == {"failed": 1, "succeeded": 2}
    rows = rows_by_instance(summary["rows"])
    assert rows[failing.instance_id]["error"] == "InstallFailed"
    for member in (first, last):
        assert rows[member.instance_id]["outcome"] == "succeeded"
        assert (member.status(ports.coexist) or {}).get("status") == "healthy"


def test_a_dry_run_by_tag_plans_every_instance(
    sfn: Any, machine_arn: str, fleet: list[Member], tiny_in_bucket: str, local_cloud: Any
) -> None:
    ids = [m.instance_id for m in fleet]
    ec2 = local_cloud.client("ec2")
    ec2.create_tags(Resources=ids, Tags=[{"Key": "fleet", "Value": "blue"}])
    try:
        result = run_execution(
            sfn,
            machine_arn,
            {"model": tiny_in_bucket, "dry_run": True, "instance_tag": {"key": "fleet", "value": "blue"}},
            timeout=600,
        )
    finally:
        ec2.delete_tags(Resources=ids, Tags=[{"Key": "fleet"}])
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    summary = result.output
    assert summary["dry_run"] is True and summary["counts"] == {"planned": 3}
    rows = rows_by_instance(summary["rows"])
    assert sorted(rows) == sorted(ids)
    for row in rows.values():
        assert row["plan"]["fits"] is True and row["plan"]["summary"], row
    # a plan changes nothing
    assert "SnapshotPrevious" not in result.states_entered
    for member in fleet:
        assert not member.runs(RUNTIME_UNIT)


def test_a_fleet_outside_the_stack_is_refused(
    sfn: Any, machine_arn: str, instance_id: str, tiny_in_bucket: str
) -> None:
    result = run_execution(
        sfn, machine_arn, {"model": tiny_in_bucket, "instances": [instance_id, "i-0123456789abcdef0"]}
    )
    assert (result.status, result.error) == ("FAILED", "InvalidInput")
    assert "i-0123456789abcdef0 not among the instances this stack manages" in (result.cause or "")
    assert "Rollout" not in result.states_entered


@pytest.fixture(scope="module")
def cli(local_cloud: Any, deployed_stack: Any) -> Any:
    """The console script against the session's stack, as tests/e2e/test_cli.py runs it."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DEPLOY_MODEL_ENDPOINT_URL": local_cloud.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": local_cloud.region,
    }

    def run(*args: str, timeout: float = 600) -> Run:
        command = [sys.executable, "-m", "asoba_deploy.cli.main", *args]
        done = subprocess.run(
            command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        return Run(done.returncode, done.stdout, done.stderr)

    return run


def test_the_cli_follows_every_instance_and_prints_the_table(
    cli: Any, fleet: list[Member], tiny_in_bucket: str
) -> None:
    ids = [m.instance_id for m in fleet]
    # When the user plans the fleet from the console script, two at a time
    run = cli(tiny_in_bucket, "--instances", ",".join(ids), "--max-concurrency", "2", "--dry-run")
    # Then each instance gets its own progress rows, then one table row with its outcome
    assert run.code == 0, run.err
    for instance_id in ids:
        assert re.search(rf"^{instance_id}  CollectResources$", run.out, re.M), run.out
        assert re.search(rf"^{instance_id}  planned$", run.out, re.M), run.out
        assert re.search(rf"^\s*{instance_id}\s+planned\s+coexist\s+fits\b", run.out, re.M), run.out
    assert "rollout succeeded: 3 planned (0 failure(s) tolerated, 2 at a time)" in run.out
    # and a bad fleet is refused before anything starts
    refused = cli(tiny_in_bucket, "--instances", f"{ids[0]},{ids[0]}")
    assert refused.code == 2 and "more than once" in refused.err


def test_rollback_on_failure_puts_the_instances_already_done_back(
    sfn: Any,
    machine_arn: str,
    fleet: list[Member],
    tiny_in_bucket: str,
    ports: Ports,
    local_cloud: Any,
    deployed_stack: Any,
    install_fails_on: Any,
) -> None:
    from asoba_deploy.core.ledger import LedgerRecord, current_deployment

    first, failing, last = fleet
    install_fails_on(failing)
    ids = [m.instance_id for m in fleet]
    # When the second instance fails and the input asks for the others to be rolled back too
    payload = {"model": tiny_in_bucket, "instances": ids, "rollback_on_failure": True}
    result = run_execution(sfn, machine_arn, payload, timeout=900)
    # Then the rollout fails, and the first, which had succeeded, is put back as it was: Flux alone
    assert (result.status, result.error) == ("FAILED", "RolloutFailed")
    cause = result.cause or ""
    assert f"{first.instance_id}: rolled-back" in cause, cause
    assert f"{failing.instance_id}: failed (InstallFailed)" in cause, cause
    assert f"{last.instance_id}: not-started" in cause, cause
    assert result.states_entered.count("UndoDeployment") == 1
    assert not first.runs(RUNTIME_UNIT) and first.runs(FLUX_UNIT) and first.port_open(ports.flux)
    assert not first.port_open(ports.coexist)
    # and the ledger says so: its success, then its rollback; status no longer shows the model
    records = ledger_records(local_cloud, deployed_stack, first.instance_id, result.arn)
    assert sorted(r["outcome"] for r in records) == ["rolled-back", "succeeded"]
    ordered = sorted(
        (LedgerRecord.model_validate(r) for r in records), key=lambda r: r.record_key, reverse=True
    )
    assert current_deployment(ordered) is None
    # the lock is free again for the next execution
    again = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True, "instance_id": ids[0]})
    assert again.status == "SUCCEEDED", (again.error, again.cause)
