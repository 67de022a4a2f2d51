"""Switching the stable endpoint between models, through the synthesized state machine.

Blue-green: the new model starts as a unit of its own on a spare port beside the old one, passes
its health check, and the switch step points the router on the stable port (the seed's) at it,
lets the old one's requests finish and stops it. A client looping requests on the stable port
all the while sees no failed request, and its answers come from the new model afterwards.
Stop-start behind the router stops the old model once the new one synced, starts the new one,
points the router at it, and reports the downtime it measured.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from local.executions import run_execution
from local.sandbox.sandbox import port_open
from tests.conftest import Ports
from tests.e2e.conftest import ROUTER_UNIT, RUNTIME_UNIT

FIRST, SECOND, THIRD = "tiny-switch-a", "tiny-switch-b", "tiny-switch-c"


@pytest.fixture(scope="module")
def switch_models(local_cloud: Any, model_bucket: str, tiny_model: Path) -> tuple[str, str, str]:
    from local.bucket import upload_model

    s3 = local_cloud.client("s3")
    for name in (FIRST, SECOND, THIRD):
        upload_model(s3, model_bucket, name, tiny_model)
    return FIRST, SECOND, THIRD


@dataclass
class LoopingClient:
    """Completions on the stable port, one after the other until stopped, alternately on one
    keep-alive connection and on a new connection each: which model answered each, and every
    failure (a refused connection, a reset, an HTTP error)."""

    port: int
    answers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LoopingClient:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        body = json.dumps({"prompt": "hello", "max_tokens": 2, "temperature": 0})
        kept = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        count = 0
        while not self._stop.is_set():
            count += 1
            fresh = count % 2 == 0
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60) if fresh else kept
            try:
                connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}: {payload[:200]!r}")
                else:
                    self.answers.append(str(json.loads(payload)["model"]))
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                if not fresh:
                    kept.close()
                    kept = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            finally:
                if fresh:
                    connection.close()
        kept.close()


def deploy(sfn: Any, machine_arn: str, model: str, strategy: str) -> dict[str, Any]:
    run = run_execution(
        sfn, machine_arn, {"model": model, "strategy": strategy, "benchmark": False}, timeout=600
    )
    assert run.status == "SUCCEEDED", (run.error, run.cause)
    assert "Switch" in run.states_entered
    return dict(run.output)


def test_blue_green_drops_no_request_and_stop_start_reports_its_downtime(
    sfn: Any, machine_arn: str, instance: Any, switch_models: tuple[str, str, str], ports: Ports
) -> None:
    first, second, third = switch_models
    # Given the first model deployed blue-green with nothing serving: the router goes in front
    record = deploy(sfn, machine_arn, first, "blue-green")
    plan = record["plan"]
    assert (plan["strategy"], plan["unit"]) == ("blue-green", f"asoba-inference@{first}.service")
    assert plan["switch"]["stable_port"] == ports.coexist and plan["port"] != ports.coexist
    assert record["endpoints"]["status"].endswith(f":{ports.coexist}/status")
    assert instance.unit_state(ROUTER_UNIT)["ActiveState"] == "active"
    assert not (instance.unit_dir / RUNTIME_UNIT).exists()
    profile = (instance.profile_dir / "asoba-inference.sh").read_text()
    assert f"export ASOBA_INFERENCE_PORT={ports.coexist}" in profile

    # When a client loops requests on the stable port while the second model is deployed blue-green
    client = LoopingClient(ports.coexist).start()
    deadline = time.monotonic() + 60
    while not client.answers and time.monotonic() < deadline:
        time.sleep(0.1)
    record = deploy(sfn, machine_arn, second, "blue-green")
    time.sleep(1.0)  # a few answers after the switch
    client.stop()

    # Then not one request failed, and the answers moved from the first model to the second, once
    assert client.failures == [], client.failures[:5]
    assert len(client.answers) > 10
    print(
        f"blue-green: {len(client.answers)} requests, 0 failed, switched at #{client.answers.index(second)}"
    )
    assert client.answers[0] == first and client.answers[-1] == second
    switched_at = client.answers.index(second)
    assert set(client.answers[:switched_at]) == {first} and set(client.answers[switched_at:]) == {second}
    # the old unit drained and stopped; the switch says no request was refused
    assert record["switch"] == {
        "strategy": "blue-green",
        "downtime_s": 0.0,
        "basis": "the router switched backends",
    }
    switched = record["results"]["switch"]
    assert switched["router"] == "reloaded" and switched["old_unit_stopped"] is True
    assert instance.unit_state(f"asoba-inference@{first}.service")["ActiveState"] == "inactive"

    # When the third model is deployed stop-start
    record = deploy(sfn, machine_arn, third, "stop-start")

    # Then the second stopped first (evicted), the router now answers from the third, and the
    # downtime the router had no backend for is measured
    assert record["plan"]["evict_units"] == [f"asoba-inference@{second}.service"]
    assert record["switch"]["strategy"] == "stop-start"
    assert 0 < record["switch"]["downtime_s"] < 600, record["switch"]
    assert record["switch"]["basis"].startswith("the evict's stop to the router on the new unit")
    # the second served on until the third's bytes were all there (a runtime that streams the
    # weights from S3 starts at once, so its evict does not wait)
    waits = record["plan"]["load_from"] != "stream"
    assert record["results"]["evict"]["sync"] == ("complete" if waits else "not awaited")
    print("stop-start:", record["switch"], "evict waited:", record["results"]["evict"]["waited_s"])
    connection = http.client.HTTPConnection("127.0.0.1", ports.coexist, timeout=60)
    connection.request(
        "POST",
        "/v1/completions",
        json.dumps({"prompt": "hi", "max_tokens": 2}),
        {"Content-Type": "application/json"},
    )
    answer = json.loads(connection.getresponse().read())
    assert answer["model"] == third, answer
    assert port_open(ports.flux), "Flux keeps serving"
