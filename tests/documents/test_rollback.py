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


def test_a_failed_resident_deployment_leaves_the_other_units_as_they_were(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    from tests.documents.residents_support import install_resident, resident_roots

    # Given Flux, the primary serving model-a and a resident serving model-r
    sandbox = make_sandbox(gpu=True)
    flux_port, primary_port, resident_port, new_port = free_port(), free_port(), free_port(), free_port()
    sandbox.install_fake_flux(flux_port, gpu_mib=2048)
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/runtime.zip")
    for model in ("model-a", "model-r", "model-n"):
        source = upload_model(aws, model, crash=model == "model-n")
        ok(run_document(aws.ssm, sandbox, "sync", ModelName=model, SourceUri=source))
    install(aws, sandbox, bundle, "model-a", primary_port)
    install_resident(aws, sandbox, bundle, "model-r", resident_port)
    assert wait_health(aws, sandbox, resident_port)["status"] == "healthy"
    resident = "asoba-inference@model-r.service"
    new = "asoba-inference@model-n.service"
    sandbox.set_gpu_claim(resident, 1500)
    primary_pid = sandbox.processes()["asoba-inference.service"]
    primary_files = {
        p: d for p, d in sandbox.tree_files().items() if "asoba-inference@" not in p and "/models/" not in p
    }

    # When a keep deployment of model-n records the units, evicts model-r to make room, and
    # installs model-n, which crashes
    roots = resident_roots(sandbox, "model-n")
    snapshot = ok(run_document(aws.ssm, sandbox, "snapshot-previous", **roots))
    assert snapshot["backup_dir"] == str(sandbox.state_dir / "models" / "model-n" / "previous")
    assert snapshot["running"] == ["flux-api.service"]
    evicted = ok(run_document(aws.ssm, sandbox, "evict", Units=resident))
    assert evicted["evicted"] == [
        {"unit": resident, "was": "active", "gpu_memory_freed_bytes": 1500 * 1048576}
    ]
    install_resident(aws, sandbox, bundle, "model-n", new_port)
    assert wait_health(aws, sandbox, new_port, want="down", timeout_s=5)["status"] == "down"
    assert (sandbox.unit_dir / new).is_file()

    # And it is rolled back with the evicted unit to restart
    rolled = ok(run_document(aws.ssm, sandbox, "rollback", **roots, RestartUnits=resident))

    # Then model-n leaves nothing: no unit, no env folder, no profile (there were none before)
    assert (rolled["unit"], rolled["env"], rolled["profile"]) == ("removed", "removed", "removed")
    assert not (sandbox.unit_dir / new).exists()
    assert not (sandbox.env_dir / "models" / "model-n").exists()
    assert not (sandbox.profile_dir / "asoba-inference@model-n.sh").exists()
    assert not list(sandbox.unit_dir.glob("*.wants/asoba-inference@model-n.service"))
    # And the evicted resident is enabled and serving again
    assert rolled["restarted_units"] == [resident]
    assert rolled["started"] == ["flux-api.service", resident]
    assert wait_health(aws, sandbox, resident_port)["status"] == "healthy"
    assert sandbox.systemctl("is-enabled", resident, check=False).stdout.strip() == "enabled"
    assert (sandbox.env_dir / "models" / "model-r" / "env").is_file()
    # And the primary and Flux were never touched
    assert sandbox.processes()["asoba-inference.service"] == primary_pid
    assert set(sandbox.processes()) == {"flux-api.service", "asoba-inference.service", resident}
    assert port_open(flux_port) and port_open(primary_port)
    now = {
        p: d for p, d in sandbox.tree_files().items() if "asoba-inference@" not in p and "/models/" not in p
    }
    assert now == primary_files
    # And a second rollback changes nothing more
    twice = ok(run_document(aws.ssm, sandbox, "rollback", **roots, RestartUnits=resident))
    assert (twice["unit"], twice["env"], twice["restarted_units"]) == ("absent", "absent", [])


def test_restart_units_are_empty_or_up_to_sixteen_unit_names() -> None:
    import re

    from local.sandbox.documents import document_content

    spec = document_content("rollback")["parameters"]["RestartUnits"]
    assert spec["default"] == ""
    sixteen = " ".join(f"asoba-inference@m{i}.service" for i in range(16))
    for value in ("", "asoba-inference@m.service", sixteen):
        assert re.fullmatch(spec["allowedPattern"], value), value
    for bad in (" ", "a.service,b.service", "a.service;reboot", "$(id).service", sixteen + " x.service"):
        assert not re.fullmatch(spec["allowedPattern"], bad), bad
