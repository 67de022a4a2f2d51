"""undeploy: removes only what an install marked; harmless on a clean instance."""

from __future__ import annotations

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
