"""rollback: the previous service, env and Flux come back; without a snapshot it refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from local.sandbox import Sandbox, free_port, port_open, run_document
from local.sandbox.bundles import fake_runtime_bundle, upload
from tests.documents.residents_support import resident_roots
from tests.documents.steps_support import install, ok, upload_model, wait_health
from tests.documents.switch_support import (
    PRIMARY_UNIT,
    ROUTER_UNIT,
    Backends,
    SlowRequest,
    backend,
    lay_out_runtime,
    router_config,
    router_status,
    state,
    switch_values,
    wait_until,
    who,
)
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


def test_rollback_puts_the_router_back_on_the_previous_backend(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:

    # Given the router on the stable port in front of model-b
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, port_c = free_port(), free_port(), free_port()
    unit_b, unit_c = "asoba-inference@model-b.service", "asoba-inference@model-c.service"
    backends.add(unit_b, port_b, "model-b")
    ok(run_document(aws.ssm, sandbox, "switch", **switch_values(stable, port_b, "model-b", unit_b)))
    # And a deployment of model-c that records the units, starts model-c and switches to it,
    # which stops and disables model-b
    roots = resident_roots(sandbox, "model-c")
    ok(run_document(aws.ssm, sandbox, "snapshot-previous", **roots))
    backends.add(unit_c, port_c, "model-c")
    switched = ok(
        run_document(
            aws.ssm,
            sandbox,
            "switch",
            **switch_values(stable, port_c, "model-c", unit_c, old_unit=unit_b, old_port=port_b),
        )
    )
    assert (switched["generation"], state(sandbox, unit_b)) == (2, "inactive")

    # When the deployment is rolled back with the router
    rolled = ok(run_document(aws.ssm, sandbox, "rollback", **roots, RouterRestore="true"))

    # Then model-b runs and is enabled again, and the router sends to it, in a new generation
    b = backend(port_b, "model-b", unit_b)
    assert rolled["router"] == {"action": "reloaded", "backend": b, "generation": 3, "old_unit_started": True}
    assert router_config(sandbox) == {"backend": b, "generation": 3}
    status = router_status(stable)
    assert status is not None and (status["backend"], status["generation"]) == (b, 3)
    assert who(stable) == "model-b"
    assert (state(sandbox, unit_b), state(sandbox, unit_b, "UnitFileState")) == ("active", "enabled")
    # And model-c leaves nothing, as any new resident rolled back
    assert (rolled["stopped"], rolled["unit"]) == (True, "removed")
    assert state(sandbox, unit_c) == "inactive" and not (sandbox.unit_dir / unit_c).exists()
    # And a second rollback changes nothing more
    before = sandbox.tree_digest()
    twice = ok(run_document(aws.ssm, sandbox, "rollback", **roots, RouterRestore="true"))
    assert twice["router"] == {
        "action": "already restored",
        "backend": None,
        "generation": None,
        "old_unit_started": False,
    }
    assert sandbox.tree_digest() == before
    assert who(stable) == "model-b"


def test_rollback_of_a_first_switch_stops_the_router_and_gives_the_port_back(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:

    # Given model-a serving on the stable port itself, with its MCP discovery profile
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b = free_port(), free_port()
    backends.add(PRIMARY_UNIT, stable, "model-a")
    (sandbox.profile_dir / "asoba-inference.sh").write_text(f"export ASOBA_INFERENCE_PORT={stable}\n")
    # And a deployment of model-b that records the units, starts model-b and switches to it: the
    # router in front, model-a stopped and disabled
    roots = resident_roots(sandbox, "model-b")
    ok(run_document(aws.ssm, sandbox, "snapshot-previous", **roots))
    etc_before = {p: d for p, d in sandbox.tree_files().items() if p.startswith("etc/")}
    unit_b = "asoba-inference@model-b.service"
    backends.add(unit_b, port_b, "model-b")
    ok(
        run_document(
            aws.ssm,
            sandbox,
            "switch",
            **switch_values(stable, port_b, "model-b", unit_b, old_unit=PRIMARY_UNIT, old_port=stable),
        )
    )
    assert who(stable) == "model-b"

    # When it is rolled back with the router
    rolled = ok(run_document(aws.ssm, sandbox, "rollback", **roots, RouterRestore="true"))

    # Then the router is stopped and model-a serves on the stable port again, enabled
    assert rolled["router"] == {
        "action": "stopped",
        "backend": None,
        "generation": None,
        "old_unit_started": True,
    }
    assert who(stable) == "model-a"
    assert state(sandbox, PRIMARY_UNIT, "UnitFileState") == "enabled"
    assert state(sandbox, ROUTER_UNIT) == "inactive"
    # And every file under etc/ is as it was: no router unit, router.env or router.json, the
    # profile model-a had, no model-b unit
    assert {p: d for p, d in sandbox.tree_files().items() if p.startswith("etc/")} == etc_before


def test_rollback_without_a_switch_record_leaves_the_router_alone(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a deployment that recorded the units but never switched
    sandbox = make_sandbox()
    ok(run_document(aws.ssm, sandbox, "snapshot-previous"))
    rolled = ok(run_document(aws.ssm, sandbox, "rollback", RouterRestore="true"))
    assert rolled["router"] == {
        "action": "nothing recorded",
        "backend": None,
        "generation": None,
        "old_unit_started": False,
    }
    # and without RouterRestore the result says nothing of the router
    assert ok(run_document(aws.ssm, sandbox, "rollback"))["router"] is None


def test_a_switch_killed_at_its_timeout_is_rolled_back_with_the_router(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:

    # Given the router in front of model-b, which holds a request in flight
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, port_c = free_port(), free_port(), free_port()
    unit_b, unit_c = "asoba-inference@model-b.service", "asoba-inference@model-c.service"
    backends.add(unit_b, port_b, "model-b")
    ok(run_document(aws.ssm, sandbox, "switch", **switch_values(stable, port_b, "model-b", unit_b)))
    roots = resident_roots(sandbox, "model-c")
    ok(run_document(aws.ssm, sandbox, "snapshot-previous", **roots))
    backends.add(unit_c, port_c, "model-c")
    slow = SlowRequest(stable)
    wait_until(lambda: backends.slow_started("model-b"), "model-b to hold the slow request")

    # When the switch to model-c is killed at its 5 s timeout while it drains model-b (no trap runs)
    run = run_document(
        aws.ssm,
        sandbox,
        "switch",
        **switch_values(stable, port_c, "model-c", unit_c, old_unit=unit_b, old_port=port_b),
        executionTimeout=5,
    )
    assert run.status == "TimedOut", run.explain()
    assert who(stable) == "model-c"

    # And the deployment is rolled back with the router
    rolled = ok(run_document(aws.ssm, sandbox, "rollback", **roots, RouterRestore="true"))

    # Then the router sends to model-b again, which never stopped
    b = backend(port_b, "model-b", unit_b)
    assert rolled["router"] == {
        "action": "reloaded",
        "backend": b,
        "generation": 3,
        "old_unit_started": False,
    }
    assert router_config(sandbox) == {"backend": b, "generation": 3}
    assert who(stable) == "model-b"
    assert (state(sandbox, unit_b), state(sandbox, unit_b, "UnitFileState")) == ("active", "enabled")
    # And the request in flight all along completes
    backends.open_gate()
    assert slow.result() == (200, {"name": "model-b", "path": "/slow"})


def test_rollback_leaves_an_earlier_deployments_switch_alone(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the router in front of model-b since an earlier deployment switched to it
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, port_c = free_port(), free_port(), free_port()
    unit_b, unit_c = "asoba-inference@model-b.service", "asoba-inference@model-c.service"
    backends.add(unit_b, port_b, "model-b")
    ok(run_document(aws.ssm, sandbox, "switch", **switch_values(stable, port_b, "model-b", unit_b)))
    # And a deployment of model-c that records the units, then fails before its switch runs
    roots = resident_roots(sandbox, "model-c")
    ok(run_document(aws.ssm, sandbox, "snapshot-previous", **roots))
    backends.add(unit_c, port_c, "model-c")

    # When it is rolled back with the router
    rolled = ok(run_document(aws.ssm, sandbox, "rollback", **roots, RouterRestore="true"))

    # Then the earlier switch's record is left alone: the router stays in front of model-b
    assert rolled["router"] == {
        "action": "earlier deployment",
        "backend": None,
        "generation": None,
        "old_unit_started": False,
    }
    assert router_config(sandbox) == {"backend": backend(port_b, "model-b", unit_b), "generation": 1}
    assert who(stable) == "model-b"
    assert state(sandbox, ROUTER_UNIT) == "active"
