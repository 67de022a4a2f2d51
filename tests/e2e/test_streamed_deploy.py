"""A deployment whose runtime streams the weights from S3 (`"load_from": "stream"`), through the
synthesized state machine: the service starts right after the install, beside the sync, loads
from the local S3 server with the Run:ai streamer, and the disk copy completes for restarts."""

from __future__ import annotations

import shutil
from typing import Any

from asoba_deploy.core.steps import STEPS, SYNC_MARKER
from local import lambda_runner
from local.executions import run_execution
from tests.conftest import Ports
from tests.e2e.helpers import get_json, wait_healthy

RUNTIME_UNIT = "asoba-inference.service"
SYNC = STEPS["sync"]


def test_a_streamed_deploy_starts_beside_the_sync_and_restarts_from_disk(
    sfn: Any, machine_arn: str, instance: Any, tiny_in_bucket: str, ports: Ports
) -> None:
    # Given the model not on the instance's disk (an earlier test may have synced it)
    shutil.rmtree(instance.models_root / tiny_in_bucket, ignore_errors=True)

    # When it is deployed with the execution's load_from: stream, the sync held back until the
    # runtime answers (a tiny model's sync would otherwise end before the runtime starts, and a
    # start after the sync loads the complete disk copy)
    def sync_send(event: dict[str, Any]) -> bool:
        return event.get("action") == "send"

    def runtime_healthy(event: dict[str, Any]) -> bool:
        try:
            code, status = get_json(f"http://127.0.0.1:{ports.coexist}/status", timeout=2)
        except OSError:
            return False
        return code == 200 and status.get("status") == "healthy"

    with lambda_runner.hold(sync_send, until=runtime_healthy, timeout=300, handler=SYNC.handler) as held:
        result = run_execution(
            sfn, machine_arn, {"model": tiny_in_bucket, "load_from": "stream"}, timeout=600
        )
    assert held, "the sync's send was not held"

    # Then the plan streams, and says it is the execution's choice
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    record = result.output
    plan = record["plan"]
    assert plan["load_from"] == "stream"
    assert "the execution's load_from says stream" in plan["load_reason"]
    assert plan["time_to_healthy"]["basis"]["load_from"] == "stream"
    # start-service did not wait for the sync's marker: it ran in install's branch, right after it
    results = record["results"]
    assert results["start_service"]["sync"] == "not awaited (streaming)"
    entered = result.states_entered
    assert entered.index("Install.Result") < entered.index("StartService") < entered.index("HealthCheck")
    # the runtime loaded the weights from S3, not from the folder the sync was writing
    code, status = get_json(f"http://127.0.0.1:{ports.coexist}/status")
    assert code == 200 and status["status"] == "healthy"
    assert status["load"]["from"] == "stream", status["load"]
    assert status["load"]["location"] == plan["source_uri"]
    assert status["load"]["streamed_bytes"] > 0
    # and the disk copy is complete, marked by this execution's sync
    folder = instance.models_root / tiny_in_bucket
    assert (folder / SYNC_MARKER).read_text().strip() == result.arn.rsplit(":", 1)[-1]
    assert results["sync"]["files_total"] == plan["source_files"]

    # When the service restarts, it loads the complete disk copy
    instance.systemctl("restart", RUNTIME_UNIT)
    restarted = wait_healthy(ports.coexist)
    assert restarted["load"]["from"] == "disk", restarted["load"]
    assert SYNC_MARKER in restarted["load"]["reason"]
    code, generated = get_json(
        f"http://127.0.0.1:{ports.coexist}/generate", {"prompt": "hello", "max_tokens": 4, "temperature": 0}
    )
    assert code == 200 and generated["choices"][0]["finish_reason"] in ("stop", "length")
