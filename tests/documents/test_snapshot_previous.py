"""snapshot-previous: what runs now is recorded and the inference service's files backed up,
replacing the previous record, and nothing running is touched."""

from __future__ import annotations

from collections.abc import Callable

from local.sandbox import Sandbox, free_port, run_document
from tests.documents.steps_support import ok
from tests.fixtures import Aws


def test_flux_alone_is_recorded_with_nothing_to_back_up(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given an instance where only Flux runs
    sandbox = make_sandbox(gpu=True)
    sandbox.install_fake_flux(free_port(), gpu_mib=1024)
    processes = sandbox.processes()

    # When the snapshot runs
    result = ok(run_document(aws.ssm, sandbox, "snapshot-previous"))

    # Then Flux is recorded as running, the inference service as absent, and nothing changed
    assert result["running"] == ["flux-api.service"]
    states = {s["unit"]: (s["state"], s["enabled"]) for s in result["services"]}  # type: ignore[attr-defined]
    assert states["asoba-inference.service"] == ("inactive", "not-found")
    backed_up = ("unit_backed_up", "env_backed_up", "profile_backed_up", "runtime_backed_up")
    assert [result[key] for key in backed_up] == [False] * 4
    assert sandbox.processes() == processes


def test_an_installed_service_is_backed_up_and_the_record_replaced(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given files an earlier install left, and an earlier record
    sandbox = make_sandbox(gpu=False)
    sandbox.unit_dir.mkdir(parents=True, exist_ok=True)
    (sandbox.unit_dir / "asoba-inference.service").write_text("[Service]\nExecStart=/bin/true\n")
    sandbox.env_dir.mkdir(parents=True, exist_ok=True)
    (sandbox.env_dir / "env").write_text("MODEL_NAME=old\n")
    (sandbox.runtime_root / "instance_runtime").mkdir(parents=True)
    (sandbox.runtime_root / "instance_runtime" / "__init__.py").write_text("# old runtime\n")
    stale = sandbox.state_dir / "previous" / "stale"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an older snapshot")

    # When the snapshot runs
    result = ok(run_document(aws.ssm, sandbox, "snapshot-previous"))

    # Then the unit, env and runtime code are copied into the record, which replaced the old one
    assert (result["unit_backed_up"], result["env_backed_up"], result["runtime_backed_up"]) == (
        True,
        True,
        True,
    )
    backup = sandbox.state_dir / "previous"
    assert (backup / "env").read_text() == "MODEL_NAME=old\n"
    assert (backup / "runtime" / "instance_runtime" / "__init__.py").read_text() == "# old runtime\n"
    assert not stale.exists()


def test_a_resident_units_record_is_its_own(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    from tests.documents.residents_support import resident_roots

    # Given the primary's record, and a resident model's unit, env file and profile installed
    sandbox = make_sandbox(gpu=False)
    primary_record = sandbox.state_dir / "previous"
    primary_record.mkdir(parents=True)
    (sandbox.state_dir / ".asoba-state").touch()
    (primary_record / "services").write_text("asoba-inference.service\tactive\tenabled\n")
    unit = "asoba-inference@qwen2.5-0.5b.service"
    (sandbox.unit_dir / unit).write_text("[Service]\nExecStart=/bin/true\n")
    env_dir = sandbox.env_dir / "models" / "qwen2.5-0.5b"
    env_dir.mkdir(parents=True)
    (env_dir / "env").write_text("MODEL_NAME=qwen2.5-0.5b\n")
    (sandbox.env_dir / "env").write_text("MODEL_NAME=primary\n")
    (sandbox.profile_dir / "asoba-inference@qwen2.5-0.5b.sh").write_text(
        "export ASOBA_INFERENCE_QWEN2_5_0_5B_PORT=8002\n"
    )
    (sandbox.profile_dir / "asoba-inference.sh").write_text("export ASOBA_INFERENCE_PORT=8001\n")

    # When the snapshot runs with the resident's roots (what the Lambdas pass for it)
    result = ok(
        run_document(aws.ssm, sandbox, "snapshot-previous", **resident_roots(sandbox, "qwen2.5-0.5b"))
    )

    # Then the resident's own files are backed up in its own record, the primary's left alone
    backup = sandbox.state_dir / "models" / "qwen2.5-0.5b" / "previous"
    assert result["backup_dir"] == str(backup)
    services = result["services"]
    assert isinstance(services, list)
    assert [service["unit"] for service in services] == ["flux-api.service", unit]
    assert (backup / "env").read_text() == "MODEL_NAME=qwen2.5-0.5b\n"
    assert (backup / "profile").read_text() == "export ASOBA_INFERENCE_QWEN2_5_0_5B_PORT=8002\n"
    assert (backup / "unit").read_text() == "[Service]\nExecStart=/bin/true\n"
    assert (primary_record / "services").read_text() == "asoba-inference.service\tactive\tenabled\n"
    assert sorted(p.name for p in primary_record.iterdir()) == ["services"]

    # And a resident unit sent with the primary's StateDir is refused before it writes anything
    wrong = run_document(aws.ssm, sandbox, "snapshot-previous", ServiceUnit=unit, EnvDir=str(env_dir))
    assert wrong.status == "Failed"
    assert wrong.result is not None and "its StateDir ends in /models/qwen2.5-0.5b" in str(
        wrong.result["error"]
    )
    assert sorted(p.name for p in primary_record.iterdir()) == ["services"]
