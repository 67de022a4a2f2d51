"""install builds the venv of the plan's engine once, reuses it by hash, and keeps two.

With the fake runtime bundle (a requirement set per engine that pip only checks: the packages are
BasePython's already) the install document picks the set by Engine, builds
RuntimeRoot/venvs/<hash> once, points RuntimeRoot/venv at it, reuses it without running pip,
builds a new one when the set changes and keeps the previous (what rollback points back to);
collect-resources reports the venvs for the plan.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asoba_deploy.core.requirement_sets import requirement_lines, requirements_sha256
from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sandbox import Sandbox, free_port, run_document
from local.sandbox.bundles import fake_runtime_bundle, upload
from tests.documents.steps_support import ok, start_service, upload_model, wait_health
from tests.fixtures import Aws

TRANSFORMERS_SET = "PyYAML\n"
VLLM_SET = "# the vllm set\npackaging  # checked, not downloaded\n"


def venv_install(aws: Aws, sandbox: Sandbox, bundle: str, port: int, **values: Any) -> dict[str, Any]:
    installed = ok(
        run_document(
            aws.ssm,
            sandbox,
            "install",
            RuntimeBundleUri=bundle,
            ModelName="model-a",
            ModelPath=str(sandbox.models_root / "model-a"),
            Port=str(port),
            Host="127.0.0.1",
            **values,
        )
    )
    start_service(aws, sandbox, "model-a")  # install writes the unit, start-service starts it
    return installed


def marker(sandbox: Sandbox, venv_hash: str) -> dict[str, str]:
    text = (sandbox.runtime_root / "venvs" / venv_hash / ".asoba-venv").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def venvs_on_disk(sandbox: Sandbox) -> set[str]:
    return {p.name for p in (sandbox.runtime_root / "venvs").iterdir() if p.is_dir()}


def linked(sandbox: Sandbox) -> str:
    return os.readlink(sandbox.runtime_root / "venv")


def test_each_engine_gets_its_venv_built_once_and_the_previous_is_kept(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given a synced model and a bundle with one requirement set per engine
    sandbox = make_sandbox(gpu=False)
    ok(run_document(aws.ssm, sandbox, "sync", ModelName="model-a", SourceUri=upload_model(aws, "model-a")))
    bundle = upload(
        aws.s3,
        aws.bucket,
        fake_runtime_bundle(tmp_path / "a.zip", requirements=TRANSFORMERS_SET, vllm_requirements=VLLM_SET),
        "assets/a.zip",
    )
    port = free_port()

    # When the transformers engine is installed
    first = venv_install(aws, sandbox, bundle, port, Engine="transformers")

    # Then its venv is built under venvs/<hash> from requirements.txt, pip held to BasePython's torch,
    # and RuntimeRoot/venv links to it
    h1 = first["venv_hash"]
    assert (first["engine"], first["requirements"], first["venv_reused"], first["pip_ran"]) == (
        "transformers",
        "requirements.txt",
        False,
        True,
    )
    assert first["venv_created"] is True and first["venvs_removed"] == [] and first["venv_seconds"] >= 0
    assert linked(sandbox) == f"venvs/{h1}"
    built = marker(sandbox, h1)
    assert (built["engine"], built["requirements"]) == ("transformers", "requirements.txt")
    assert built["requirements_sha256"] == requirements_sha256(requirement_lines(TRANSFORMERS_SET))
    base_torch = subprocess.run(
        [sandbox.base_python, "-c", "from importlib import metadata; print(metadata.version('torch'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv_dir = sandbox.runtime_root / "venvs" / h1
    assert (venv_dir / ".constraints.txt").read_text() == f"torch=={base_torch}\n"
    pip_log = venv_dir / ".pip.log"
    assert "PyYAML" in pip_log.read_text()
    assert not list(venv_dir.glob("lib/python*/site-packages/torch-*.dist-info"))
    logged = (pip_log.read_bytes(), pip_log.stat().st_mtime_ns)
    # And the unit runs the runtime through RuntimeRoot/venv
    assert wait_health(aws, sandbox, port)["status"] == "healthy"
    assert (
        f"ExecStart={sandbox.runtime_root}/venv/bin/python"
        in (sandbox.unit_dir / "asoba-inference.service").read_text()
    )

    # When it is installed again
    again = venv_install(aws, sandbox, bundle, port, Engine="transformers")
    # Then the venv is reused: same hash, no pip, its log untouched
    assert (again["venv_hash"], again["venv_reused"], again["venv_created"], again["pip_ran"]) == (
        h1,
        True,
        False,
        False,
    )
    assert (pip_log.read_bytes(), pip_log.stat().st_mtime_ns) == logged

    # When the vllm engine is installed from the same bundle
    vllm = venv_install(aws, sandbox, bundle, port, Engine="vllm")
    # Then its own set (requirements-vllm.txt) gets a venv of its own, and the previous stays
    h2 = vllm["venv_hash"]
    assert h2 != h1
    assert (vllm["engine"], vllm["requirements"], vllm["venv_reused"], vllm["pip_ran"]) == (
        "vllm",
        "requirements-vllm.txt",
        False,
        True,
    )
    assert vllm["torch_extras_removed"] == []
    assert marker(sandbox, h2)["requirements_sha256"] == requirements_sha256(["packaging"])
    assert "packaging" in (sandbox.runtime_root / "venvs" / h2 / ".pip.log").read_text()
    assert (linked(sandbox), venvs_on_disk(sandbox)) == (f"venvs/{h2}", {h1, h2})
    assert "ENGINE=vllm" in (sandbox.env_dir / "env").read_text().splitlines()

    # And collect-resources reports both venvs for the plan, the linked one current
    collected = ok(run_document(aws.ssm, sandbox, "collect-resources"))
    snapshot = InstanceSnapshot.model_validate(collected)
    reported = {v.hash: (v.engine, v.requirements_sha256, v.current) for v in snapshot.runtime_venvs or []}
    assert reported == {
        h1: ("transformers", built["requirements_sha256"], False),
        h2: ("vllm", requirements_sha256(["packaging"]), True),
    }
    assert snapshot.runtime_venvs_total == 2

    # When the transformers set changes (a new bundle)
    bundle_b = upload(
        aws.s3,
        aws.bucket,
        fake_runtime_bundle(
            tmp_path / "b.zip", requirements="PyYAML\npackaging\n", vllm_requirements=VLLM_SET
        ),
        "assets/b.zip",
    )
    changed = venv_install(aws, sandbox, bundle_b, port, Engine="transformers")
    # Then it gets a new hash; the previous (vllm) venv is kept and the older one removed
    h3 = changed["venv_hash"]
    assert h3 not in (h1, h2) and (changed["venv_reused"], changed["pip_ran"]) == (False, True)
    assert changed["venvs_removed"] == [h1]
    assert (linked(sandbox), venvs_on_disk(sandbox)) == (f"venvs/{h3}", {h2, h3})
    assert wait_health(aws, sandbox, port)["status"] == "healthy"

    # And back on vllm, its venv (the previous) is reused as it was
    back = venv_install(aws, sandbox, bundle_b, port, Engine="vllm")
    assert (back["venv_hash"], back["venv_reused"], back["pip_ran"], back["venvs_removed"]) == (
        h2,
        True,
        False,
        [],
    )
    assert (linked(sandbox), venvs_on_disk(sandbox)) == (f"venvs/{h2}", {h2, h3})


def test_a_half_built_venv_is_rebuilt_and_a_venv_folder_of_the_old_layout_replaced(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given an instance with RuntimeRoot/venv as a folder (the layout before venvs/)
    sandbox = make_sandbox(gpu=False)
    ok(run_document(aws.ssm, sandbox, "sync", ModelName="model-a", SourceUri=upload_model(aws, "model-a")))
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "a.zip"), "assets/a.zip")
    (sandbox.runtime_root / "venv" / "bin").mkdir(parents=True)
    (sandbox.runtime_root / "venv" / ".base-python").write_text("/usr/bin/python3\n")
    port = free_port()

    # When install runs
    first = venv_install(aws, sandbox, bundle, port)
    # Then RuntimeRoot/venv becomes the link to the new venv, the old folder gone
    h1 = first["venv_hash"]
    assert (linked(sandbox), venvs_on_disk(sandbox)) == (f"venvs/{h1}", {h1})
    # (the fake bundle's requirement files name nothing: a venv, no pip)
    assert (first["venv_reused"], first["pip_ran"]) == (False, False)

    # When an install stopped before the venv's marker was written
    (sandbox.runtime_root / "venvs" / h1 / ".asoba-venv").unlink()
    (sandbox.runtime_root / "venvs" / h1 / "leftover").write_text("half-built\n")
    again = venv_install(aws, sandbox, bundle, port)
    # Then the next one builds it again from scratch
    assert (again["venv_hash"], again["venv_reused"]) == (h1, False)
    assert not (sandbox.runtime_root / "venvs" / h1 / "leftover").exists()
    assert wait_health(aws, sandbox, port)["status"] == "healthy"


def test_rollback_points_runtime_venv_back_at_the_previous_engines(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given a transformers deployment
    sandbox = make_sandbox(gpu=False)
    ok(run_document(aws.ssm, sandbox, "sync", ModelName="model-a", SourceUri=upload_model(aws, "model-a")))
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "a.zip"), "assets/a.zip")
    port = free_port()
    first = venv_install(aws, sandbox, bundle, port, Engine="transformers")
    # When a vllm deployment is recorded over it, installed and rolled back
    ok(run_document(aws.ssm, sandbox, "snapshot-previous"))
    second = venv_install(aws, sandbox, bundle, port, Engine="vllm")
    assert linked(sandbox) == f"venvs/{second['venv_hash']}" != f"venvs/{first['venv_hash']}"
    ok(run_document(aws.ssm, sandbox, "rollback"))
    # Then RuntimeRoot/venv is the transformers venv again, beside the env file that names it
    assert linked(sandbox) == f"venvs/{first['venv_hash']}"
    assert "ENGINE=transformers" in (sandbox.env_dir / "env").read_text().splitlines()
    assert wait_health(aws, sandbox, port)["status"] == "healthy"


def fake_wheel(folder: Path, name: str) -> Path:
    """A pure-Python wheel named `name` 0.0.1 (an empty package), written by hand."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}/__init__.py": b"",
        f"{name}-0.0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n".encode(),
        f"{name}-0.0.1.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{name}-0.0.1.dist-info/RECORD"] = (record + f"{name}-0.0.1.dist-info/RECORD,,\n").encode()
    wheel = folder / f"{name}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def test_the_vllm_venv_never_keeps_a_torchvision(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given a vllm set that pulls a torchvision (a local wheel standing in for vLLM's dependency)
    sandbox = make_sandbox(gpu=False)
    ok(run_document(aws.ssm, sandbox, "sync", ModelName="model-a", SourceUri=upload_model(aws, "model-a")))
    wheel = fake_wheel(tmp_path, "torchvision")
    bundle = upload(
        aws.s3,
        aws.bucket,
        fake_runtime_bundle(tmp_path / "a.zip", vllm_requirements=f"PyYAML\n{wheel}\n"),
        "assets/a.zip",
    )
    # When the vllm engine is installed
    installed = venv_install(aws, sandbox, bundle, free_port(), Engine="vllm")
    # Then pip installed it and install removed it again before the venv counted as built
    assert (installed["pip_ran"], installed["torch_extras_removed"]) == (True, ["torchvision"])
    venv_dir = sandbox.runtime_root / "venvs" / installed["venv_hash"]
    assert not list(venv_dir.glob("lib/python*/site-packages/torchvision*"))
    assert (venv_dir / ".asoba-venv").is_file()
