"""install with the real instance_runtime bundle and a real (tiny) model: the unit the
shim starts loads the model and serves /health and /status in the seed's format."""

from __future__ import annotations

import json
import re
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


def test_a_resident_model_gets_its_own_unit_env_and_profile_beside_the_primary(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    from local.sandbox import port_open
    from tests.documents.residents_support import install_resident
    from tests.documents.steps_support import install, upload_model, wait_health

    # Given the primary installed and serving model-a
    sandbox = make_sandbox(gpu=False)
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/runtime.zip")
    primary_port, resident_port = free_port(), free_port()
    for model in ("model-a", "qwen2.5-0.5b"):
        synced = run_document(aws.ssm, sandbox, "sync", ModelName=model, SourceUri=upload_model(aws, model))
        assert synced.status == "Success", synced.explain()
    install(aws, sandbox, bundle, "model-a", primary_port)
    primary_files = {
        path: (sandbox.root / path).read_bytes()
        for path in (
            "etc/asoba-inference/env",
            "etc/systemd/system/asoba-inference.service",
            "etc/profile.d/asoba-inference.sh",
        )
    }
    # (the primary's profile is the seed's, byte for byte)
    assert primary_files["etc/profile.d/asoba-inference.sh"].decode() == (
        "# MCP discovery of the asoba inference service. Rendered by the install-runtime SSM document.\n"
        f"export MISTRAL_STATUS_URL=http://localhost:{primary_port}/status\n"
        "export MISTRAL_FALLBACK_IP=127.0.0.1\n"
        f"export ASOBA_INFERENCE_PORT={primary_port}\n"
    )
    assert "ADAPTERS=" not in primary_files["etc/asoba-inference/env"].decode()
    primary_pid = sandbox.processes()["asoba-inference.service"]

    # When qwen2.5-0.5b is installed and started as a resident unit, with two more adapters
    adapters = f"sql={sandbox.models_root}/sql-lora,chat.v2={sandbox.models_root}/chat-lora"
    installed = install_resident(aws, sandbox, bundle, "qwen2.5-0.5b", resident_port, adapters=adapters)

    # Then its files are its own: a concrete unit file reading its own env file
    unit = "asoba-inference@qwen2.5-0.5b.service"
    env_dir = sandbox.env_dir / "models" / "qwen2.5-0.5b"
    assert installed["unit_path"] == str(sandbox.unit_dir / unit)
    assert installed["env_path"] == str(env_dir / "env")
    unit_text = (sandbox.unit_dir / unit).read_text()
    assert f"EnvironmentFile={env_dir / 'env'}" in unit_text.splitlines()
    assert "@" not in unit_text.replace(unit, "")  # no placeholder, no template instance (%i)
    env = dict(
        line.split("=", 1)
        for line in (env_dir / "env").read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    assert (env["MODEL_NAME"], env["PORT"], env["ADAPTERS"]) == ("qwen2.5-0.5b", str(resident_port), adapters)
    # And its profile names it without touching the primary's MISTRAL_* variables
    assert (sandbox.profile_dir / "asoba-inference@qwen2.5-0.5b.sh").read_text().splitlines()[-2:] == [
        f"export ASOBA_INFERENCE_QWEN2_5_0_5B_PORT={resident_port}",
        f"export ASOBA_INFERENCE_QWEN2_5_0_5B_STATUS_URL=http://localhost:{resident_port}/status",
    ]
    assert {path: (sandbox.root / path).read_bytes() for path in primary_files} == primary_files
    # And both serve, the primary's process untouched
    assert wait_health(aws, sandbox, resident_port)["status"] == "healthy"
    assert sandbox.processes()["asoba-inference.service"] == primary_pid
    assert port_open(primary_port)
    assert set(sandbox.processes()) == {"asoba-inference.service", unit}

    # And a resident unit pointed at the primary's env folder is refused before anything is written
    wrong = run_document(
        aws.ssm,
        sandbox,
        "install",
        RuntimeBundleUri=bundle,
        ModelName="model-b",
        ModelPath=str(sandbox.models_root / "model-b"),
        ServiceUnit="asoba-inference@model-b.service",
    )
    assert wrong.status == "Failed"
    assert wrong.result is not None and "its EnvDir ends in /models/model-b" in str(wrong.result["error"])
    assert not (sandbox.unit_dir / "asoba-inference@model-b.service").exists()
    assert {path: (sandbox.root / path).read_bytes() for path in primary_files} == primary_files


def test_adapters_are_name_path_pairs() -> None:
    from local.sandbox.documents import document_content

    pattern = document_content("install")["parameters"]["Adapters"]["allowedPattern"]
    good = [
        "",
        "sql=/opt/models/sql-lora",
        "a=/x/y,b.2=/opt/models/b_2",
        ",".join(f"a{i}=/m/a{i}" for i in range(16)),
    ]
    bad = [
        "sql",
        "sql=relative/path",
        "=/opt/x",
        "a=/x,",
        "a=/x;b=/y",
        "a=/x b=/y",
        "-a=/x",
        "a=/x/../etc",
        "a=/x,b='$(id)'",
        ",".join(f"a{i}=/m/a{i}" for i in range(17)),
    ]
    for value in good:
        assert re.fullmatch(pattern, value), value
    for value in bad:
        assert not re.fullmatch(pattern, value), value


def test_an_adapter_joining_a_unit_keeps_its_env_but_adapters(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given the primary installed for its base model, with one adapter beside it
    sandbox = make_sandbox(gpu=False)
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/runtime.zip")
    base = sandbox.models_root / "tiny-base"
    first = f"lora-a={sandbox.models_root}/lora-a"
    port = str(free_port())
    installed = run_document(
        aws.ssm,
        sandbox,
        "install",
        RuntimeBundleUri=bundle,
        ModelName="tiny-base",
        ModelPath=str(base),
        Port=port,
        Host="127.0.0.1",
        ContextTokens="1024",
        Adapters=first,
    )
    assert installed.status == "Success", installed.explain()
    env_before = env_values(sandbox)
    unit_before = (sandbox.unit_dir / "asoba-inference.service").read_bytes()
    profile_before = (sandbox.profile_dir / "asoba-inference.sh").read_bytes()

    # When a second adapter joins its process (the plan's other values are the adapter's own)
    both = f"{first},lora-b={sandbox.models_root}/lora-b"
    joined = run_document(
        aws.ssm,
        sandbox,
        "install",
        RuntimeBundleUri=bundle,
        ModelName="lora-b",
        ModelPath=str(sandbox.models_root / "lora-b"),
        Port="9999",
        ContextTokens="4096",
        KeepEnv="true",
        Adapters=both,
    )

    # Then only ADAPTERS changed: the unit serves what it served, with both adapters
    assert joined.status == "Success", joined.explain()
    assert env_values(sandbox) == {**env_before, "ADAPTERS": both}
    assert (sandbox.env_dir / "env").read_text().count("ADAPTERS=") == 1
    assert (sandbox.unit_dir / "asoba-inference.service").read_bytes() == unit_before
    assert (sandbox.profile_dir / "asoba-inference.sh").read_bytes() == profile_before

    # And joining a unit that has no env file fails: no unit or env is written for it
    lonely = run_document(
        aws.ssm,
        sandbox,
        "install",
        RuntimeBundleUri=bundle,
        ModelName="lora-c",
        ModelPath=str(sandbox.models_root / "lora-c"),
        ServiceUnit="asoba-inference@nobody.service",
        EnvDir=str(sandbox.env_dir / "models" / "nobody"),
        KeepEnv="true",
        Adapters=f"lora-c={sandbox.models_root}/lora-c",
    )
    assert lonely.status == "Failed"
    assert lonely.result is not None and "there is no process to join" in str(lonely.result["error"])
    assert not (sandbox.env_dir / "models" / "nobody").exists()
    assert not (sandbox.unit_dir / "asoba-inference@nobody.service").exists()
