"""stop-flux: a unit is stopped only when its process is gone and its GPU memory is free."""

from __future__ import annotations

from collections.abc import Callable

from local.sandbox import Sandbox, free_port, port_open, run_document
from tests.fixtures import Aws

MIB = 1024 * 1024


def test_stopping_flux_closes_its_port_and_frees_its_gpu(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given Flux running on its port with 4 GiB of GPU memory
    sandbox = make_sandbox(gpu=True)
    port = free_port()
    sandbox.install_fake_flux(port, gpu_mib=4096)
    pid = sandbox.processes()["flux-api.service"]

    # When stop-flux stops it
    run = run_document(aws.ssm, sandbox, "stop-flux", Unit="flux-api.service")

    # Then the unit is inactive, its port closed and its memory released
    assert run.status == "Success", run.explain()
    assert run.result is not None
    assert {
        k: run.result[k]
        for k in ("ok", "unit", "was_active", "state", "stopped_pids", "gpu_memory_released_bytes")
    } == {
        "ok": True,
        "unit": "flux-api.service",
        "was_active": True,
        "state": "inactive",
        "stopped_pids": [pid],
        "gpu_memory_released_bytes": 4096 * MIB,
    }
    assert not port_open(port)
    assert "flux-api.service" not in sandbox.processes()
    # And doing it again is harmless
    again = run_document(aws.ssm, sandbox, "stop-flux", Unit="flux-api.service")
    assert again.status == "Success" and again.result is not None and again.result["was_active"] is False


def test_it_waits_for_gpu_memory_released_late(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given a driver that frees Flux's memory 1.5 s after the process exits
    sandbox = make_sandbox(gpu=True)
    sandbox.install_fake_flux(free_port(), gpu_mib=2048, gpu_linger_s=1.5)

    run = run_document(aws.ssm, sandbox, "stop-flux", Unit="flux-api.service", WaitSeconds="20")

    assert run.status == "Success", run.explain()
    assert run.result is not None and run.result["seconds"] >= 1.5


def test_memory_still_held_after_the_bound_is_a_clear_failure(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a GPU that never gets Flux's memory back
    sandbox = make_sandbox(gpu=True)
    port = free_port()
    sandbox.install_fake_flux(port, gpu_mib=3000, gpu_linger_s=None)
    pid = sandbox.processes()["flux-api.service"]

    run = run_document(aws.ssm, sandbox, "stop-flux", Unit="flux-api.service", WaitSeconds="2")

    assert (run.status, run.response_code) == ("Failed", 1)
    assert run.result == {
        "ok": False,
        "error": f"flux-api.service stopped, but PID {pid} still holds 3000 MiB of GPU memory 2 s later",
    }
    assert not port_open(port)


def test_stopping_an_absent_unit_succeeds(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(gpu=False)
    run = run_document(aws.ssm, sandbox, "stop-flux", Unit="flux-api.service")
    assert run.status == "Success", run.explain()
    assert run.result is not None
    assert (run.result["was_active"], run.result["state"]) == (False, "not-found")


def test_without_a_gpu_stopping_is_just_stopping(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(gpu=False)
    port = free_port()
    sandbox.install_fake_flux(port)
    run = run_document(aws.ssm, sandbox, "stop-flux", Unit="flux-api.service")
    assert run.status == "Success", run.explain()
    assert run.result is not None and run.result["gpu_memory_released_bytes"] == 0
    assert not port_open(port)
