"""Whole deployments of the synthesized state machine against the sandboxed instance."""

from __future__ import annotations

from typing import Any

from local.executions import run_execution
from local.sandbox.sandbox import port_open
from tests.conftest import Ports
from tests.e2e.helpers import finish, get_json, start


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
