"""undeploy: removes only what an install marked; harmless on a clean instance."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from local.sandbox import Sandbox, free_port, run_document
from local.sandbox.bundles import fake_runtime_bundle, upload
from tests.documents.residents_support import install_resident, resident_roots
from tests.documents.steps_support import install, instance_files, ok, upload_model, wait_health
from tests.fixtures import Aws


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


def test_undeploy_removes_one_unit_and_the_runtime_with_the_last(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given the primary serving model-a and two residents, each with its rollback record
    sandbox = make_sandbox(gpu=False)
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/runtime.zip")
    ports = {model: free_port() for model in ("model-a", "model-r", "model.s-2")}
    for model in ports:
        ok(run_document(aws.ssm, sandbox, "sync", ModelName=model, SourceUri=upload_model(aws, model)))
    ok(run_document(aws.ssm, sandbox, "snapshot-previous"))
    install(aws, sandbox, bundle, "model-a", ports["model-a"])
    for model in ("model-r", "model.s-2"):
        ok(run_document(aws.ssm, sandbox, "snapshot-previous", **resident_roots(sandbox, model)))
        install_resident(aws, sandbox, bundle, model, ports[model])
    r, s = "asoba-inference@model-r.service", "asoba-inference@model.s-2.service"
    assert set(sandbox.processes()) == {"asoba-inference.service", r, s}
    pids = sandbox.processes()

    # When model-r is undeployed
    first = ok(run_document(aws.ssm, sandbox, "undeploy", **resident_roots(sandbox, "model-r")))

    # Then exactly its unit, env folder, profile and record are gone; the runtime and the others stay
    assert (first["unit"], first["stopped"], first["runtime_removed"]) == (r, True, False)
    assert first["remaining_units"] == ["asoba-inference.service", s]
    assert not (sandbox.unit_dir / r).exists()
    assert not (sandbox.env_dir / "models" / "model-r").exists()
    assert not (sandbox.profile_dir / "asoba-inference@model-r.sh").exists()
    assert not (sandbox.state_dir / "models" / "model-r").exists()
    assert (sandbox.state_dir / "models" / "model.s-2" / "previous" / "services").is_file()
    assert (sandbox.state_dir / "previous" / "services").is_file()
    assert (sandbox.runtime_root / "instance_runtime").is_dir()
    assert sandbox.processes() == {u: p for u, p in pids.items() if u != r}
    assert wait_health(aws, sandbox, ports["model.s-2"])["status"] == "healthy"

    # When the primary is undeployed while a resident remains
    second = ok(run_document(aws.ssm, sandbox, "undeploy"))

    # Then the primary's files and record go, the runtime and the resident (and its record) stay
    assert (second["runtime_removed"], second["remaining_units"]) == (False, [s])
    assert not (sandbox.unit_dir / "asoba-inference.service").exists()
    assert not (sandbox.env_dir / "env").exists() and not (sandbox.state_dir / "previous").exists()
    assert (sandbox.env_dir / "models" / "model.s-2" / "env").is_file()
    assert (sandbox.state_dir / "models" / "model.s-2" / "previous" / "services").is_file()
    assert (sandbox.runtime_root / "instance_runtime").is_dir()
    assert sandbox.processes() == {s: pids[s]}
    assert wait_health(aws, sandbox, ports["model.s-2"])["status"] == "healthy"

    # When the last resident is undeployed
    last = ok(run_document(aws.ssm, sandbox, "undeploy", **resident_roots(sandbox, "model.s-2")))

    # Then the shared runtime goes with it, and nothing of the deployments is left
    assert (last["runtime_removed"], last["remaining_units"]) == (True, [])
    assert sandbox.processes() == {}
    assert not sandbox.runtime_root.exists()
    assert not sandbox.env_dir.exists() and not sandbox.state_dir.exists()
    assert sorted(instance_files(sandbox)) == []


def test_the_router_goes_with_the_last_runtime_unit(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given two residents, the router (a stand-in process) in front of model-b on the stable port
    sandbox = make_sandbox(gpu=False)
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/runtime.zip")
    ports = {model: free_port() for model in ("model-b", "model-c")}
    for model, port in ports.items():
        ok(run_document(aws.ssm, sandbox, "sync", ModelName=model, SourceUri=upload_model(aws, model)))
        ok(run_document(aws.ssm, sandbox, "snapshot-previous", **resident_roots(sandbox, model)))
        install_resident(aws, sandbox, bundle, model, port)
    sleeper = tmp_path / "router.py"
    sleeper.write_text("import time\ntime.sleep(600)\n")
    (sandbox.unit_dir / "asoba-router.service").write_text(
        f"[Service]\nExecStart={sys.executable} {sleeper}\n\n[Install]\nWantedBy=multi-user.target\n"
    )
    (sandbox.env_dir / "router.env").write_text("ROUTER_PORT=8001\n")
    backend = {"port": ports["model-b"], "model": "model-b", "unit": "asoba-inference@model-b.service"}
    (sandbox.env_dir / "router.json").write_text(json.dumps({"backend": backend, "generation": 1}))
    (sandbox.profile_dir / "asoba-inference.sh").write_text("export ASOBA_INFERENCE_PORT=8001\n")
    (sandbox.state_dir / "switch").mkdir()
    (sandbox.state_dir / ".asoba-state").touch()  # as the switch leaves it
    sandbox.systemctl("daemon-reload")
    sandbox.systemctl("enable", "asoba-router.service")
    sandbox.systemctl("start", "asoba-router.service")

    # When the router's backend is undeployed while model-c remains
    first = ok(run_document(aws.ssm, sandbox, "undeploy", **resident_roots(sandbox, "model-b")))

    # Then the router stays (the stable port answers 502 until a deployment points it elsewhere),
    # and the result says its backend is gone
    assert (first["router_removed"], first["router_backend_removed"]) == (False, True)
    assert "asoba-router.service" in sandbox.processes()

    # When the last unit is undeployed
    last = ok(run_document(aws.ssm, sandbox, "undeploy", **resident_roots(sandbox, "model-c")))

    # Then the router goes with it: process, unit, its files, the profile and the switch's record
    assert (last["router_removed"], last["router_backend_removed"], last["runtime_removed"]) == (
        True,
        False,
        True,
    )
    assert sandbox.processes() == {}
    assert not (sandbox.unit_dir / "asoba-router.service").exists()
    assert not sandbox.env_dir.exists() and not sandbox.state_dir.exists()
    assert not (sandbox.profile_dir / "asoba-inference.sh").exists()
    assert sorted(instance_files(sandbox)) == []
