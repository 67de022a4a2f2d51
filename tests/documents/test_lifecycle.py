"""Every instance step in the order a deployment runs them, on one sandboxed instance:
snapshot-previous, stop-flux, sync, install, health-check, then rollback and undeploy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sandbox import Sandbox, free_port, port_open, run_document
from local.sandbox.bundles import fake_runtime_bundle, upload
from tests.documents.steps_support import install, instance_files, ok, upload_model, wait_health
from tests.fixtures import Aws


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
