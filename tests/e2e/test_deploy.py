"""Whole deployments of the synthesized state machine against the sandboxed instance."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.conftest import Ports
from tests.emulator.executions import run_execution
from tests.sandbox.sandbox import port_open


def get_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


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
    assert "SyncModel" not in result.states_entered


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
