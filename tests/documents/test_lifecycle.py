"""A deployment's instance side, document by document, with the fake runtime (no model to load):
snapshot-previous, stop-flux, sync, install, health-check, collect-resources,
validate, rollback, undeploy."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sandbox import DocumentRun, Sandbox, free_port, port_open, run_document
from local.sandbox.bundles import fake_runtime_bundle, upload
from tests.fixtures import Aws


def upload_model(aws: Aws, name: str, *, crash: bool = False) -> str:
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\0" * 4096}
    if crash:
        files["FAKE_RUNTIME_CRASH"] = b""
    for file_name, data in files.items():
        aws.s3.put_object(Bucket=aws.bucket, Key=f"models/{name}/{file_name}", Body=data)
    return f"s3://{aws.bucket}/models/{name}/"


def ok(run: DocumentRun) -> dict[str, object]:
    assert run.status == "Success", run.explain()
    assert run.result is not None and run.result["ok"] is True, run.explain()
    return run.result


def install(aws: Aws, sandbox: Sandbox, bundle: str, model: str, port: int) -> dict[str, object]:
    return ok(
        run_document(
            aws.ssm,
            sandbox,
            "install",
            RuntimeBundleUri=bundle,
            ModelName=model,
            ModelPath=str(sandbox.models_root / model),
            Port=str(port),
            Host="127.0.0.1",
        )
    )


def wait_health(
    aws: Aws, sandbox: Sandbox, port: int, want: str = "healthy", timeout_s: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = ok(run_document(aws.ssm, sandbox, "health-check", Port=str(port)))
        if result["status"] == want or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def instance_files(sandbox: Sandbox) -> dict[str, str]:
    """The instance's files, the model cache aside (undeploy keeps synced models)."""
    return {
        path: digest for path, digest in sandbox.tree_files().items() if not path.startswith("opt/models/")
    }


def test_first_deployment_then_rollback_then_undeploy(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given a GPU instance where only Flux runs
    sandbox = make_sandbox(gpu=True)
    flux_port, port = free_port(), free_port()
    sandbox.install_fake_flux(flux_port, gpu_mib=4096)
    initial_files = instance_files(sandbox)
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/abc123.zip")
    source = upload_model(aws, "tiny-model")

    # When the deployment's steps run
    snapshot = ok(run_document(aws.ssm, sandbox, "snapshot-previous"))
    assert snapshot["running"] == ["flux-api.service"]
    backed_up = ("unit_backed_up", "env_backed_up", "profile_backed_up", "runtime_backed_up")
    assert [snapshot[key] for key in backed_up] == [False] * 4
    ok(run_document(aws.ssm, sandbox, "stop-flux", Unit="flux-api.service"))
    ok(run_document(aws.ssm, sandbox, "sync", ModelName="tiny-model", SourceUri=source))
    installed = install(aws, sandbox, bundle, "tiny-model", port)

    # Then the service is installed as the seed describes and answers
    assert {
        k: installed[k]
        for k in ("unit", "port", "runtime_version", "bundle_changed", "venv_created", "pip_ran")
    } == {
        "unit": "asoba-inference.service",
        "port": port,
        "runtime_version": "0.0.0+sandbox",
        "bundle_changed": True,
        "venv_created": True,
        "pip_ran": False,
    }
    unit = (sandbox.unit_dir / "asoba-inference.service").read_text().splitlines()
    for line in (
        f"User={sandbox.service_user}",
        f"WorkingDirectory={sandbox.runtime_root}",
        f"EnvironmentFile={sandbox.env_dir / 'env'}",
        "Restart=always",
        "RestartSec=10",
        "MemoryMax=32G",
        "CPUQuota=800%",
        f"ExecStart={sandbox.runtime_root}/venv/bin/python -m instance_runtime",
    ):
        assert line in unit
    env = (sandbox.env_dir / "env").read_text().splitlines()
    for line in (
        f"MODEL_PATH={sandbox.models_root / 'tiny-model'}",
        "MODEL_NAME=tiny-model",
        f"PORT={port}",
        "HOST=127.0.0.1",
        "QUANTIZATION=none",
        "DTYPE=auto",
        "CONTEXT_LENGTH=4096",
        "MAX_NEW_TOKENS=2048",
    ):
        assert line in env
    profile = (sandbox.profile_dir / "asoba-inference.sh").read_text().splitlines()
    assert f"export MISTRAL_STATUS_URL=http://localhost:{port}/status" in profile
    assert "export MISTRAL_FALLBACK_IP=127.0.0.1" in profile
    assert f"export ASOBA_INFERENCE_PORT={port}" in profile
    assert (sandbox.unit_dir / "multi-user.target.wants" / "asoba-inference.service").is_symlink()
    health = wait_health(aws, sandbox, port)
    assert health["status"] == "healthy"
    assert isinstance(health["status_body"], dict) and health["status_body"]["model"] == "tiny-model"
    assert not port_open(flux_port)

    # And the snapshot and the validation see it
    collected = run_document(aws.ssm, sandbox, "collect-resources")
    snapshot_now = InstanceSnapshot.model_validate_json(collected.stdout.strip())
    service = snapshot_now.service("asoba-inference.service")
    assert service is not None and service.active and service.port == port
    assert snapshot_now.runtime_version == "0.0.0+sandbox"
    assert snapshot_now.cached("tiny-model") is not None
    validated = ok(run_document(aws.ssm, sandbox, "check-instance", S3Uri=f"s3://{aws.bucket}/models/"))
    checks = {check["name"]: check["status"] for check in validated["checks"]}  # type: ignore[attr-defined]
    assert all(check["ok"] for check in validated["checks"])  # type: ignore[attr-defined]
    assert validated["gpu_free_bytes"] == (23028 - 0) * 1024 * 1024  # Flux stopped, nothing else on it
    assert validated["runtime_healthy"] is True
    assert checks == {
        "s3": "pass",
        "privileges": "pass",
        "systemd": "pass",
        "flux_service": "warn",
        "inference_service": "pass",
        "memory": "pass",
        "gpu": "pass",
        "disk": checks["disk"],
        "python_env": "pass",
        "runtime": "pass",
        "health_format": "pass",
    }

    # When the deployment is rolled back
    rolled = ok(run_document(aws.ssm, sandbox, "rollback"))

    # Then the new service is gone and Flux serves again, as before the deployment
    assert {k: rolled[k] for k in ("stopped", "unit", "env", "profile", "runtime", "started")} == {
        "stopped": True,
        "unit": "removed",
        "env": "removed",
        "profile": "removed",
        "runtime": "kept",
        "started": ["flux-api.service"],
    }
    assert (rolled["restored"], rolled["removed"]) == ([], ["unit", "env", "profile"])
    assert set(sandbox.processes()) == {"flux-api.service"}
    assert port_open(flux_port) and not port_open(port)

    # When the runtime is undeployed (and Flux asked for)
    undeployed = ok(run_document(aws.ssm, sandbox, "undeploy", StartFlux="true"))

    # Then no trace is left but the cached model, and Flux runs
    assert undeployed["flux_started"] is True and undeployed["flux_state"] == "active"
    assert instance_files(sandbox) == initial_files
    assert set(sandbox.processes()) == {"flux-api.service"}


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
    ok(
        run_document(
            aws.ssm, sandbox, "sync", ModelName="model-a", SourceUri=upload_model(aws, "model-a")
        )
    )
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


def test_undeploy_deletes_only_marked_folders(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given a runtime root that the install never wrote (no marker), e.g. a mistyped parameter
    sandbox = make_sandbox()
    precious = sandbox.root / "opt" / "precious"
    precious.mkdir(parents=True)
    (precious / "data").write_text("keep me")

    run = run_document(aws.ssm, sandbox, "undeploy", RuntimeRoot=str(precious))

    assert run.status == "Failed"
    assert run.result is not None and "no .asoba-runtime marker" in str(run.result["error"])
    assert (precious / "data").read_text() == "keep me"


def test_undeploy_on_a_clean_instance_is_harmless(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    before = sandbox.tree_digest()
    result = ok(run_document(aws.ssm, sandbox, "undeploy"))
    assert (result["stopped"], result["removed"], result["flux_started"]) == (False, [], False)
    assert sandbox.tree_digest() == before


def test_validate_reports_every_check_even_when_one_fails(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a CPU instance whose model bucket does not exist
    sandbox = make_sandbox(gpu=False)

    run = run_document(aws.ssm, sandbox, "check-instance", S3Uri="s3://no-such-bucket-anywhere/")

    assert (run.status, run.response_code) == ("Failed", 1)
    assert run.result is not None
    assert run.result["error"] == "failed checks: s3"
    checks = {check["name"]: check["status"] for check in run.result["checks"]}  # type: ignore[union-attr]
    assert checks == {
        "s3": "fail",
        "privileges": "pass",
        "systemd": "pass",
        "flux_service": "warn",
        "inference_service": "skip",
        "memory": "pass",
        "gpu": "warn",
        "disk": checks["disk"],
        "python_env": "pass",
        "runtime": "skip",
        "health_format": "skip",
    }
    assert (run.result["failed"], run.result["skipped"]) == (1, 3)
    assert [c["name"] for c in run.result["checks"] if not c["ok"]] == ["s3"]  # type: ignore[union-attr]
    assert (run.result["gpu_free_bytes"], run.result["runtime_healthy"]) == (None, None)
