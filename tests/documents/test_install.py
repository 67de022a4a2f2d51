"""install with the real instance_runtime bundle and a real (tiny) model: the unit the
shim starts loads the model and serves /health and /status in the seed's format."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sandbox import Sandbox, free_port, run_document
from local.sandbox.bundles import RUNTIME_DIR, fake_runtime_bundle, runtime_bundle, upload
from tests.fixtures import Aws


def env_values(sandbox: Sandbox) -> dict[str, str]:
    lines = (sandbox.env_dir / "env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_an_adapter_install_names_its_base_in_the_env_file(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given an adapter and its base already synced (sync's folders), and the runtime's asset
    sandbox = make_sandbox(gpu=False)
    adapter, base = sandbox.models_root / "tiny-lora", sandbox.models_root / "tiny-base"
    for folder in (adapter, base):
        folder.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "org/Tiny-Base"}')
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/runtime.zip")
    common: dict[str, Any] = {"RuntimeBundleUri": bundle, "ModelName": "tiny-lora", "ModelPath": str(adapter)}

    # When install runs with the plan's base path
    installed = run_document(
        aws.ssm,
        sandbox,
        "install",
        **common,
        BaseModelPath=str(base),
        Port=str(free_port()),
        Host="127.0.0.1",
    )

    # Then the env file the unit reads gives the runtime both folders
    assert installed.status == "Success", installed.explain()
    env = env_values(sandbox)
    assert (env["MODEL_PATH"], env["BASE_MODEL_PATH"]) == (str(adapter), str(base))

    # When a model that is no adapter is installed (no BaseModelPath: its default, empty)
    plain = run_document(
        aws.ssm, sandbox, "install", **{**common, "ModelName": "tiny-base", "ModelPath": str(base)}
    )
    # Then the variable is empty, which the runtime reads as unset
    assert plain.status == "Success", plain.explain()
    assert env_values(sandbox)["BASE_MODEL_PATH"] == ""


@pytest.mark.slow
@pytest.mark.skipif(not (RUNTIME_DIR / "app.py").is_file(), reason="instance_runtime is not written yet")
def test_the_real_runtime_installs_serves_and_goes_away(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    from local.models import build_tiny_model

    # Given the stack's runtime asset and a tiny model in S3
    sandbox = make_sandbox(gpu=False)
    port = free_port()
    model = build_tiny_model(tmp_path / "tiny-llama")
    for path in sorted(model.rglob("*")):
        if path.is_file():
            key = f"models/tiny-llama/{path.relative_to(model).as_posix()}"
            aws.s3.upload_file(str(path), aws.bucket, key)
    bundle = upload(aws.s3, aws.bucket, runtime_bundle(tmp_path / "runtime.zip"), "assets/runtime.zip")
    synced = run_document(
        aws.ssm,
        sandbox,
        "sync",
        ModelName="tiny-llama",
        SourceUri=f"s3://{aws.bucket}/models/tiny-llama/",
        ExecutionName="install-test",
    )
    assert synced.status == "Success", synced.explain()

    # When install runs
    installed = run_document(
        aws.ssm,
        sandbox,
        "install",
        RuntimeBundleUri=bundle,
        ModelName="tiny-llama",
        ModelPath=str(sandbox.models_root / "tiny-llama"),
        Port=str(port),
        Host="127.0.0.1",
        ContextTokens="512",
        MaxNewTokens="64",
    )

    # Then the runtime's venv reuses the base packages (pip finds everything satisfied) and the
    # unit runs the real service
    assert installed.status == "Success", installed.explain()
    assert installed.result is not None
    import instance_runtime

    assert installed.result["runtime_version"] == instance_runtime.__version__
    assert (installed.result["venv_created"], installed.result["pip_ran"]) == (True, True)
    # install only writes the unit; start-service starts it once this sync's marker is there
    assert "asoba-inference.service" not in sandbox.processes()
    started = run_document(
        aws.ssm,
        sandbox,
        "start-service",
        ModelPath=str(sandbox.models_root / "tiny-llama"),
        ExecutionName="install-test",
    )
    assert started.status == "Success", started.explain()
    assert "asoba-inference.service" in sandbox.processes()
    deadline = time.monotonic() + 120
    status = "down"
    while time.monotonic() < deadline:
        checked = run_document(aws.ssm, sandbox, "health-check", Port=str(port))
        assert checked.result is not None, checked.explain()
        status = str(checked.result["status"])
        if status in ("healthy", "error"):
            break
        time.sleep(1)
    assert status == "healthy", sandbox.journal("asoba-inference.service")[-3000:]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
        assert json.loads(answer.read())["status"] in ("ok", "healthy")
    assert checked.result is not None
    body = checked.result["status_body"]
    assert isinstance(body, dict) and body["model"] == "tiny-llama" and body["port"] == port

    # And the instance's own reports agree
    snapshot = InstanceSnapshot.model_validate_json(
        run_document(aws.ssm, sandbox, "collect-resources").stdout.strip()
    )
    service = snapshot.service("asoba-inference.service")
    assert service is not None and service.active and service.port == port and service.rss_bytes > 0
    assert snapshot.runtime_version == instance_runtime.__version__
    validated = run_document(aws.ssm, sandbox, "check-instance", S3Uri=f"s3://{aws.bucket}/")
    assert validated.result is not None, validated.explain()
    checks = {check["name"]: check for check in validated.result["checks"]}
    assert checks["health_format"]["status"] == "pass", checks["health_format"]
    assert checks["runtime"]["status"] == "pass"

    # When it is undeployed, nothing of it is left
    undeployed = run_document(aws.ssm, sandbox, "undeploy")
    assert undeployed.status == "Success", undeployed.explain()
    assert sandbox.processes() == {}
    assert not sandbox.runtime_root.exists() and not (sandbox.unit_dir / "asoba-inference.service").exists()
