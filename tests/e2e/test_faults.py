"""Faults after SnapshotPrevious: each execution fails with its own error, the instance is
put back as it was (Flux, the previous runtime), and the lock is released."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.bucket import upload_model
from local.executions import run_execution
from local.sandbox.download_content import parse_s3_url
from local.sandbox.sandbox import port_open
from tests.conftest import Ports
from tests.e2e.helpers import TricklingServer, finish, start, wait_healthy, wait_until_state_entered

FLUX = "flux-api.service"
RUNTIME = "asoba-inference.service"


@pytest.fixture
def flux_holds_the_gpu(instance: Any) -> Any:
    """A model must replace Flux, so a failure has Flux to restore."""
    instance.set_gpu_claim(FLUX, 22800)
    return instance


def assert_flux_restored(instance: Any, ports: Ports) -> None:
    assert FLUX in instance.processes(), "rollback must restart Flux"
    assert port_open(ports.flux)
    assert RUNTIME not in instance.processes()


def assert_lock_released(sfn: Any, machine_arn: str, model: str) -> None:
    # a dry run must get the lock at once
    result = run_execution(sfn, machine_arn, {"model": model, "dry_run": True})
    assert result.status == "SUCCEEDED", (result.error, result.cause)


@pytest.fixture
def runtime_bundle(local_cloud: Any, deployed_stack: Any) -> Iterator[tuple[str, str, bytes]]:
    """The stack's runtime bundle object; restored after the test."""
    lam = local_cloud.client("lambda")
    config = lam.get_function_configuration(FunctionName=deployed_stack.functions["Install"])
    url = json.loads(config["Environment"]["Variables"]["ASOBA_STACK"])["runtime_bundle_uri"]
    location = parse_s3_url(url)  # the https object URL the agent's download reads
    assert location is not None, url
    bucket, key = location.bucket, location.key
    s3 = local_cloud.client("s3")
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    yield bucket, key, original
    s3.put_object(Bucket=bucket, Key=key, Body=original)


def with_requirements(bundle: bytes, extra_line: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(bundle)) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "requirements.txt":
                data = data + f"\n{extra_line}\n".encode()
            target.writestr(item, data)
    return out.getvalue()


def test_health_never_healthy_restores_the_previous_runtime(
    sfn: Any,
    machine_arn: str,
    instance: Any,
    tiny_in_bucket: str,
    tiny_model: Path,
    local_cloud: Any,
    model_bucket: str,
    ports: Ports,
    tmp_path: Path,
) -> None:
    # Given a runtime already serving the tiny model beside Flux
    first = run_execution(sfn, machine_arn, {"model": tiny_in_bucket}, timeout=600)
    assert first.status == "SUCCEEDED", (first.error, first.cause)
    # and a model whose weights do not match its config
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model, corrupt)
    config = json.loads((corrupt / "config.json").read_text())
    config["vocab_size"] += 7
    (corrupt / "config.json").write_text(json.dumps(config))
    upload_model(local_cloud.client("s3"), model_bucket, "tiny-corrupt", corrupt)

    result = run_execution(sfn, machine_arn, {"model": "tiny-corrupt"}, timeout=600)

    assert result.status == "FAILED"
    assert result.error == "HealthCheckFailed"
    assert "rolled back" in (result.cause or "")
    # the restored unit restarts and loads its model again
    status = wait_healthy(ports.coexist)
    assert status["model"] == tiny_in_bucket, "the previous runtime must serve again"
    assert port_open(ports.flux)
    assert_lock_released(sfn, machine_arn, tiny_in_bucket)


def test_install_failure_restarts_flux(
    sfn: Any,
    machine_arn: str,
    flux_holds_the_gpu: Any,
    tiny_in_bucket: str,
    ports: Ports,
    local_cloud: Any,
    runtime_bundle: tuple[str, str, bytes],
) -> None:
    bucket, key, original = runtime_bundle
    broken = with_requirements(original, "asoba-no-such-package==9.9.9")
    local_cloud.client("s3").put_object(Bucket=bucket, Key=key, Body=broken)

    result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket}, timeout=600)

    assert result.status == "FAILED"
    assert result.error == "InstallFailed"
    assert "StopFlux" in result.states_entered
    assert_flux_restored(flux_holds_the_gpu, ports)
    assert_lock_released(sfn, machine_arn, tiny_in_bucket)


def test_command_timeout_fails_install_and_restarts_flux(
    sfn: Any,
    machine_arn: str,
    flux_holds_the_gpu: Any,
    tiny_in_bucket: str,
    ports: Ports,
    local_cloud: Any,
    runtime_bundle: tuple[str, str, bytes],
) -> None:
    # a requirement whose download never ends: install outlives its executionTimeout
    server = TricklingServer()
    try:
        bucket, key, original = runtime_bundle
        hanging = with_requirements(
            original, f"hangpkg @ http://127.0.0.1:{server.port}/hangpkg-1.0-py3-none-any.whl"
        )
        local_cloud.client("s3").put_object(Bucket=bucket, Key=key, Body=hanging)

        result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket}, timeout=600)
    finally:
        server.close()

    assert result.status == "FAILED"
    assert result.error == "InstallFailed"
    assert "timedout" in (result.cause or "").lower().replace(" ", "")
    assert_flux_restored(flux_holds_the_gpu, ports)
    assert_lock_released(sfn, machine_arn, tiny_in_bucket)


def test_object_missing_mid_way_fails_sync(
    sfn: Any,
    machine_arn: str,
    flux_holds_the_gpu: Any,
    tiny_model: Path,
    ports: Ports,
    local_cloud: Any,
    model_bucket: str,
) -> None:
    s3 = local_cloud.client("s3")
    upload_model(s3, model_bucket, "tiny-vanishing", tiny_model)
    arn = start(sfn, machine_arn, {"model": "tiny-vanishing"}, "vanishing")
    # the plan has read the headers; the weights vanish before the sync reaches them
    wait_until_state_entered(sfn, arn, "SnapshotPrevious")
    s3.delete_object(Bucket=model_bucket, Key="tiny-vanishing/model.safetensors")

    result = finish(sfn, arn)

    assert result.status == "FAILED"
    assert result.error == "SyncFailed"
    assert "changed in S3" in (result.cause or "")
    assert_flux_restored(flux_holds_the_gpu, ports)


def test_instance_stops_answering_mid_run(
    sfn: Any, machine_arn: str, flux_holds_the_gpu: Any, tiny_in_bucket: str, ports: Ports
) -> None:
    instance = flux_holds_the_gpu
    instance.delivery_timeout_s = 3.0
    try:
        arn = start(sfn, machine_arn, {"model": tiny_in_bucket}, "goes-quiet")
        wait_until_state_entered(sfn, arn, "Install")
        instance.go_offline()
        wait_until_state_entered(sfn, arn, "RollbackInstance")
        instance.go_online()
        result = finish(sfn, arn)
    finally:
        instance.delivery_timeout_s = None
        instance.go_online()

    assert result.status == "FAILED"
    assert result.error == "InstanceUnavailable"
    assert_flux_restored(instance, ports)
