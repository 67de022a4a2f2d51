"""Whole deployments of the synthesized state machine against the sandboxed instance."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from asoba_deploy.core.steps import SYNC_MARKER
from local.bucket import upload_model
from local.executions import run_execution
from local.sandbox.sandbox import port_open
from tests.conftest import Ports
from tests.e2e.helpers import TricklingServer, finish, get_json, start, wait_until_state_entered
from tests.e2e.test_faults import (  # noqa: F401  (flux_holds_the_gpu, runtime_bundle: fixtures)
    assert_flux_restored,
    flux_holds_the_gpu,
    runtime_bundle,
    with_requirements,
)


def test_dry_run_outputs_the_plan_and_changes_nothing(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str, ports: Ports
) -> None:
    before_tree, before_processes = instance.tree_digest(), instance.processes()

    result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True})

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    plan = result.output
    assert plan["model"] == tiny_in_bucket
    assert plan["action"] == "coexist"
    assert plan["port"] == ports.coexist
    assert plan["fits"] is True
    assert plan["stop_services"] == []
    assert instance.tree_digest() == before_tree
    assert instance.processes() == before_processes
    assert "Sync" not in result.states_entered


def test_small_model_deploys_beside_flux(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str, ports: Ports
) -> None:
    result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket}, timeout=600)

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    record = result.output
    assert record["outcome"] == "succeeded"
    assert record["action"] == "coexist"
    assert port_open(ports.flux), "Flux must keep answering"
    code, status = get_json(f"http://127.0.0.1:{ports.coexist}/status")
    assert code == 200 and status["status"] == "healthy"
    assert status["model"] == tiny_in_bucket
    code, generated = get_json(
        f"http://127.0.0.1:{ports.coexist}/generate", {"prompt": "hello", "max_tokens": 4, "temperature": 0}
    )
    assert code == 200
    assert set(generated) >= {"choices", "usage", "model", "created", "id"}
    assert generated["choices"][0]["finish_reason"] in ("stop", "length")

    # Sync and install ran at once (each began before the other ended); in install's branch the
    # service started next (on the instance it waited for the sync's marker unless it streams),
    # then the health check, still inside Prepare
    entered = result.states_entered
    assert entered.index("Prepare") < min(entered.index("Sync"), entered.index("Install"))
    assert entered.index("Install") < entered.index("Sync.Result")
    assert entered.index("Sync") < entered.index("Install.Result")
    assert entered.index("Install.Result") < entered.index("StartService")
    assert entered.index("StartService.Result") < entered.index("HealthCheck")
    assert entered.index("HealthCheck.Result") < entered.index("Prepare.Done")
    steps = record["results"]
    # it waited for this execution's sync marker unless the runtime streams the weights
    streams = record["plan"]["load_from"] == "stream"
    assert steps["start_service"]["sync"] == ("not awaited (streaming)" if streams else "complete")
    assert steps["start_service"]["state"] == "active"
    assert (
        instance.models_root.joinpath(tiny_in_bucket, SYNC_MARKER).read_text().strip()
        == result.arn.rsplit(":", 1)[-1]
    )

    # And the ledger record carries the measured time to healthy beside the plan's estimate
    timing = record["time_to_healthy"]
    assert set(timing) >= {"estimate_s", "actual_s", "transfer_s", "install_s", "load_s"}
    assert all(timing[part] > 0 for part in ("actual_s", "transfer_s", "install_s", "load_s")), timing
    # the parts are the commands' own timings; the whole runs from the execution's start
    assert timing["actual_s"] >= timing["load_s"] + max(timing["transfer_s"], timing["install_s"]) * 0.99
    estimate = (record["plan"].get("time_to_healthy") or {}).get("estimate_s")
    assert timing["estimate_s"] == estimate
    print("time to healthy:", timing)


def test_large_model_replaces_flux(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str, ports: Ports
) -> None:
    # Flux holds nearly all of the A10G: the model cannot sit beside it
    instance.set_gpu_claim("flux-api.service", 22800)

    result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket}, timeout=600)

    assert result.status == "SUCCEEDED", (result.error, result.cause)
    record = result.output
    assert record["action"] == "replace"
    assert record["port"] == ports.flux
    assert "flux-api.service" not in instance.processes()
    assert record["previous"] is not None
    code, status = get_json(f"http://127.0.0.1:{ports.flux}/status")
    assert code == 200 and status["model"] == tiny_in_bucket and status["port"] == ports.flux
    assert "StopFlux" in result.states_entered


def test_two_executions_at_once_only_one_deploys(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str
) -> None:
    first = start(sfn, machine_arn, {"model": tiny_in_bucket}, "together-a")
    second = start(sfn, machine_arn, {"model": tiny_in_bucket}, "together-b")

    results = sorted((finish(sfn, first), finish(sfn, second)), key=lambda r: r.status)

    assert [r.status for r in results] == ["FAILED", "SUCCEEDED"]
    refused = results[0]
    assert refused.error == "DeploymentInProgress"
    assert "nothing was changed" in (refused.cause or "")
    assert "CollectResources" not in refused.states_entered


def test_a_failed_sync_stops_the_install_beside_it_before_the_rollback(
    sfn: Any,
    machine_arn: str,
    flux_holds_the_gpu: Any,  # noqa: F811  (the fixture)
    tiny_model: Path,
    ports: Ports,
    local_cloud: Any,
    model_bucket: str,
    runtime_bundle: tuple[str, str, bytes],  # noqa: F811  (the fixture)
) -> None:
    # Given an install that hangs in pip (a requirement whose download never ends) while the
    # model's weights vanish from S3 after the plan read their headers
    server = TricklingServer()
    s3 = local_cloud.client("s3")
    try:
        bucket, key, original = runtime_bundle
        hanging = with_requirements(
            original, f"hangpkg @ http://127.0.0.1:{server.port}/hangpkg-1.0-py3-none-any.whl"
        )
        s3.put_object(Bucket=bucket, Key=key, Body=hanging)
        upload_model(s3, model_bucket, "tiny-parallel-fault", tiny_model)
        arn = start(sfn, machine_arn, {"model": "tiny-parallel-fault"}, "parallel-fault")
        wait_until_state_entered(sfn, arn, "SnapshotPrevious")
        s3.delete_object(Bucket=model_bucket, Key="tiny-parallel-fault/model.safetensors")

        # When the sync fails beside the install that still runs
        result = finish(sfn, arn)
    finally:
        server.close()

    # Then the execution fails with the sync's error and is rolled back; the install's command,
    # which Step Functions' Parallel does not stop, was cancelled before the rollback ran
    assert (result.status, result.error) == ("FAILED", "SyncFailed"), result.cause
    listed = local_cloud.client("ssm").list_commands(InstanceId=flux_holds_the_gpu.instance_id)["Commands"]
    installs = [c for c in listed if re.fullmatch(r"install#\d+ parallel-fault", c.get("Comment", ""))]
    assert [c["Status"] for c in installs] == ["Cancelled"]
    rollbacks = [c for c in listed if re.fullmatch(r"rollback#\d+ parallel-fault", c.get("Comment", ""))]
    assert [c["Status"] for c in rollbacks] == ["Success"]
    assert installs[0]["RequestedDateTime"] < rollbacks[0]["RequestedDateTime"]
    assert_flux_restored(flux_holds_the_gpu, ports)
