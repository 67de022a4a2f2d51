"""Several models resident on one instance, through the synthesized state machine.

The primary model serves on the seed's port; a second one deployed with `"resident": "keep"`
runs beside it as `asoba-inference@<model>.service` on the next free port, and both answer
/v1/completions. A third that does not fit is refused with the plan naming the least recently
used model that would have to stop; with `"evict": "lru"` that model stops and the third runs,
and `deploy-model undeploy <model>` removes exactly one of them. The evict step waits for the
new model's sync: a deployment whose sync fails stopped nothing, and one that fails after the
evict step put the evicted model back.

The sandbox's GPU is an A10G (about 23 GB): the tests claim GPU memory for the runtime units
(as the CUDA context and weights of bigger models would) so the third model does not fit, and
Flux may not be stopped, so the residents are the only room there is.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asoba_deploy.core.steps import STEPS
from local import lambda_runner
from local.executions import run_execution
from local.sandbox.sandbox import port_open
from tests.conftest import Ports
from tests.e2e.conftest import RUNTIME_UNIT
from tests.e2e.helpers import finish, get_json, start, wait_healthy, wait_until_state_entered
from tests.e2e.test_cli import cli  # noqa: F401  (the fixture: the deploy-model script)

SECOND, THIRD, VANISHING = "tiny-resident-b", "tiny-resident-c", "tiny-resident-gone"
CORRUPT = "tiny-resident-corrupt"  # its config does not match its weights: it never loads
# Flux's 4 GiB plus two of these leave 132 MiB of the sandbox's A10G: less than a CUDA context.
CLAIM_MIB = 9400


def resident_unit(model: str) -> str:
    return f"asoba-inference@{model}.service"


@dataclass(frozen=True)
class Bucket:
    s3: Any
    name: str


@pytest.fixture(scope="module")
def residents_bucket(
    local_cloud: Any,
    model_bucket: str,
    tiny_model: Path,
    tiny_in_bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Bucket:
    from local.bucket import upload_model

    s3 = local_cloud.client("s3")
    for name in (SECOND, THIRD, VANISHING):
        upload_model(s3, model_bucket, name, tiny_model)
    corrupt = tmp_path_factory.mktemp("corrupt") / CORRUPT
    shutil.copytree(tiny_model, corrupt)
    config = json.loads((corrupt / "config.json").read_text())
    config["vocab_size"] += 7
    (corrupt / "config.json").write_text(json.dumps(config))
    upload_model(s3, model_bucket, CORRUPT, corrupt)
    return Bucket(s3, model_bucket)


def complete(port: int, model: str) -> dict[str, Any]:
    code, body = get_json(
        f"http://127.0.0.1:{port}/v1/completions",
        {"model": model, "prompt": "hello", "max_tokens": 4, "temperature": 0},
    )
    assert code == 200, body
    assert body["model"] == model and body["choices"][0]["text"] is not None
    return body


def deploy(sfn: Any, machine_arn: str, model: str, **extra: Any) -> Any:
    payload = {"model": model, "benchmark": False, "allow_stop_flux": False, **extra}
    return run_execution(sfn, machine_arn, payload, timeout=600)


def test_models_stay_resident_and_the_least_recently_used_is_evicted_only_when_allowed(
    sfn: Any,
    machine_arn: str,
    instance: Any,
    residents_bucket: Bucket,
    tiny_in_bucket: str,
    ports: Ports,
    cli: Any,  # noqa: F811  (the fixture)
) -> None:
    first = tiny_in_bucket
    # Given the primary model deployed beside Flux (the seed's behaviour)
    primary = deploy(sfn, machine_arn, first)
    assert primary.status == "SUCCEEDED", (primary.error, primary.cause)
    assert primary.output["plan"]["unit"] == RUNTIME_UNIT

    # When a second model is deployed with "resident": "keep"
    kept = deploy(sfn, machine_arn, SECOND, resident="keep")

    # Then it runs as a unit of its own on the next free port, and both answer
    assert kept.status == "SUCCEEDED", (kept.error, kept.cause)
    plan = kept.output["plan"]
    assert plan["unit"] == resident_unit(SECOND)
    second_port = plan["port"]
    assert second_port not in (ports.coexist, ports.flux)
    assert [r["unit"] for r in plan["resident_models"]] == [RUNTIME_UNIT]
    assert instance.unit_state(RUNTIME_UNIT)["ActiveState"] == "active"
    assert instance.unit_state(resident_unit(SECOND))["ActiveState"] == "active"
    assert port_open(ports.flux), "Flux keeps serving"
    complete(ports.coexist, first)
    time.sleep(1.1)  # last_request_at has second resolution in the plan's words; order is what counts
    complete(second_port, SECOND)
    # its own env file and MCP discovery variables; the primary's are untouched
    env = (instance.env_dir / "models" / SECOND / "env").read_text()
    assert f"PORT={second_port}\n" in env and f"MODEL_NAME={SECOND}\n" in env
    assert f"PORT={ports.coexist}\n" in (instance.env_dir / "env").read_text()
    profile = (instance.profile_dir / f"asoba-inference@{SECOND}.sh").read_text()
    assert f"export ASOBA_INFERENCE_TINY_RESIDENT_B_PORT={second_port}" in profile

    # Given both runtimes holding most of the GPU (the primary used least recently)
    instance.set_gpu_claim(RUNTIME_UNIT, CLAIM_MIB)
    instance.set_gpu_claim(resident_unit(SECOND), CLAIM_MIB)

    # When a third model is deployed with "keep" but no eviction allowed
    before = instance.processes()
    refused = deploy(sfn, machine_arn, THIRD, resident="keep")

    # Then it is refused, the reason naming the model that would have to stop; nothing changed
    assert (refused.status, refused.error) == ("FAILED", "InsufficientResources"), refused.cause
    assert "fits only if these resident models stop" in (refused.cause or "")
    assert f"{first} ({RUNTIME_UNIT}" in (refused.cause or "")
    assert SECOND not in (refused.cause or "").split("stop, least recently used first:")[-1].split(";")[0]
    assert instance.processes() == before

    # When a deployment that would evict fails in its sync (its weights vanish from S3 once
    # planned: the sync's send is held until they are gone)
    serving = instance.processes()[RUNTIME_UNIT]
    vanished = threading.Event()
    with lambda_runner.hold(
        lambda event: event.get("action") == "send",
        until=lambda event: vanished.is_set(),
        timeout=300,
        handler=STEPS["sync"].handler,
    ) as held:
        arn = start(
            sfn,
            machine_arn,
            {
                "model": VANISHING,
                "benchmark": False,
                "allow_stop_flux": False,
                "resident": "keep",
                "evict": "lru",
            },
            "resident-evict-fails",
        )
        wait_until_state_entered(sfn, arn, "SnapshotPrevious")
        residents_bucket.s3.delete_object(Bucket=residents_bucket.name, Key=f"{VANISHING}/model.safetensors")
        vanished.set()
        failed = finish(sfn, arn)
    assert held, "the sync's send was not held"

    # Then nothing was evicted: the evict step waits for the sync, so the least recently used
    # model served throughout, in the same process
    assert (failed.status, failed.error) == ("FAILED", "SyncFailed"), failed.cause
    assert instance.processes()[RUNTIME_UNIT] == serving
    assert instance.unit_state(RUNTIME_UNIT)["UnitFileState"] == "enabled"
    assert instance.unit_state(resident_unit(SECOND))["ActiveState"] == "active"
    assert not (instance.unit_dir / resident_unit(VANISHING)).exists()

    # When one fails after its evict step (its weights do not load: the health check fails)
    broken = deploy(sfn, machine_arn, CORRUPT, resident="keep", evict="lru")

    # Then the rollback started the evicted model again: the resident set is as it was
    assert (broken.status, broken.error) == ("FAILED", "HealthCheckFailed"), broken.cause
    assert "Evict" in broken.states_entered
    assert instance.unit_state(RUNTIME_UNIT)["ActiveState"] == "active"
    assert instance.processes()[RUNTIME_UNIT] != serving  # stopped by the evict, started again
    assert instance.unit_state(RUNTIME_UNIT)["UnitFileState"] == "enabled"
    assert instance.unit_state(resident_unit(SECOND))["ActiveState"] == "active"
    assert not (instance.unit_dir / resident_unit(CORRUPT)).exists()
    wait_healthy(ports.coexist)
    complete(ports.coexist, first)
    time.sleep(1.1)
    complete(second_port, SECOND)  # the primary is again the least recently used
    instance.set_gpu_claim(RUNTIME_UNIT, CLAIM_MIB)

    # When it is deployed again with "evict": "lru"
    evicted = deploy(sfn, machine_arn, THIRD, resident="keep", evict="lru")

    # Then the least recently used model (the primary) stopped and the third runs; the second stays
    assert evicted.status == "SUCCEEDED", (evicted.error, evicted.cause)
    plan = evicted.output["plan"]
    assert plan["evict_units"] == [RUNTIME_UNIT]
    assert "Evict" in evicted.states_entered
    assert instance.unit_state(RUNTIME_UNIT)["ActiveState"] == "inactive"
    assert instance.unit_state(resident_unit(SECOND))["ActiveState"] == "active"
    assert instance.unit_state(resident_unit(THIRD))["ActiveState"] == "active"
    assert evicted.output["results"]["evict"]["evicted"][0]["unit"] == RUNTIME_UNIT
    complete(second_port, SECOND)
    complete(plan["port"], THIRD)

    # When `deploy-model undeploy <model>` removes the second
    run = cli("undeploy", SECOND, "--instance-id", instance.instance_id)

    # Then exactly that unit is gone; the third keeps serving, and the inventory says so
    assert run.code == 0, (run.out, run.err)
    assert not (instance.unit_dir / resident_unit(SECOND)).exists()
    assert not (instance.env_dir / "models" / SECOND).exists()
    assert not port_open(second_port)
    assert instance.unit_state(resident_unit(THIRD))["ActiveState"] == "active"
    complete(plan["port"], THIRD)
    run = cli("status", "--json", "--instance-id", instance.instance_id)
    assert run.code == 0, (run.out, run.err)
    (status,) = json.loads(run.out)
    assert [r["model"] for r in status["residents"]] == [THIRD]
