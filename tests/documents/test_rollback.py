"""rollback: the previous service, env and Flux come back; without a snapshot it refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from local.sandbox import Sandbox, free_port, port_open, run_document
from local.sandbox.bundles import fake_runtime_bundle, upload
from tests.documents.steps_support import install, ok, upload_model, wait_health
from tests.fixtures import Aws


def test_rollback_restores_the_previous_service(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given Flux and a first deployment (v1) serving model-a, with a bundle whose requirements pip checks
    sandbox = make_sandbox(gpu=True)
    flux_port, port_v1, port_v2 = free_port(), free_port(), free_port()
    sandbox.install_fake_flux(flux_port, gpu_mib=2048)
    bundle_v1 = upload(
        aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "v1.zip", requirements="PyYAML\n"), "assets/v1.zip"
    )
    ok(run_document(aws.ssm, sandbox, "sync", ModelName="model-a", SourceUri=upload_model(aws, "model-a")))
    first = install(aws, sandbox, bundle_v1, "model-a", port_v1)
    assert (first["venv_created"], first["pip_ran"]) == (True, True)
    assert wait_health(aws, sandbox, port_v1)["status"] == "healthy"
    unit_v1 = (sandbox.unit_dir / "asoba-inference.service").read_text()
    env_v1 = (sandbox.env_dir / "env").read_text()

    # And the same install again reuses everything
    again = install(aws, sandbox, bundle_v1, "model-a", port_v1)
    assert (again["bundle_changed"], again["venv_created"], again["pip_ran"]) == (False, False, False)

    # When a second deployment (v2, new code) replaces Flux with a model that crashes
    snapshot = ok(run_document(aws.ssm, sandbox, "snapshot-previous"))
    assert snapshot["running"] == ["flux-api.service", "asoba-inference.service"]
    backed_up = ("unit_backed_up", "env_backed_up", "profile_backed_up", "runtime_backed_up")
    assert [snapshot[key] for key in backed_up] == [True] * 4
    ok(run_document(aws.ssm, sandbox, "stop-flux", Unit="flux-api.service"))
    ok(
        run_document(
            aws.ssm,
            sandbox,
            "sync",
            ModelName="model-b",
            SourceUri=upload_model(aws, "model-b", crash=True),
        )
    )
    bundle_v2 = upload(
        aws.s3,
        aws.bucket,
        fake_runtime_bundle(tmp_path / "v2.zip", requirements="PyYAML\n", version="0.0.2"),
        "assets/v2.zip",
    )
    second = install(aws, sandbox, bundle_v2, "model-b", port_v2)
    # a new bundle with the same requirements: new code, no pip
    assert (second["bundle_changed"], second["venv_created"], second["pip_ran"]) == (True, False, False)
    assert second["runtime_version"] == "0.0.2"
    assert wait_health(aws, sandbox, port_v2, want="down", timeout_s=5)["status"] == "down"

    # And it is rolled back
    rolled = ok(run_document(aws.ssm, sandbox, "rollback"))

    # Then v1's unit and env are back, and both services that ran before run again
    assert {k: rolled[k] for k in ("unit", "env", "profile", "runtime", "started")} == {
        "unit": "restored",
        "env": "restored",
        "profile": "restored",
        "runtime": "restored",
        "started": ["flux-api.service", "asoba-inference.service"],
    }
    assert (sandbox.runtime_root / "VERSION").read_text() == "0.0.0+sandbox\n"
    assert (rolled["restored"], rolled["removed"]) == (["unit", "env", "profile", "runtime"], [])
    assert (sandbox.unit_dir / "asoba-inference.service").read_text() == unit_v1
    assert (sandbox.env_dir / "env").read_text() == env_v1
    assert f"ASOBA_INFERENCE_PORT={port_v1}" in (sandbox.profile_dir / "asoba-inference.sh").read_text()
    assert set(sandbox.processes()) == {"flux-api.service", "asoba-inference.service"}
    assert wait_health(aws, sandbox, port_v1)["status"] == "healthy"
    assert port_open(flux_port)
    # And rolling back twice changes nothing more
    twice = ok(run_document(aws.ssm, sandbox, "rollback"))
    assert (twice["runtime"], twice["started"]) == ("kept", ["flux-api.service", "asoba-inference.service"])


def test_rollback_without_a_snapshot_refuses(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    run = run_document(aws.ssm, sandbox, "rollback")
    assert run.status == "Failed"
    assert run.result is not None and "snapshot-previous did not run" in str(run.result["error"])
