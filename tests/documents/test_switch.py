"""switch: the stable port moves to a new backend through the router without dropping a request.

The first switch puts the real router (instance_runtime.router, as its unit) in front: the old
unit on the stable port stops and the router takes the port the moment it is free, while the old
unit still finishes its request in flight. Later switches reload the router; the old backend is
drained on the router's in-flight count before its unit stops. A backend that does not answer
/health changes nothing; a failure once router.json is written puts everything back.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from local.sandbox import Sandbox, free_port, run_document, send_document, wait_invocation
from local.sandbox.documents import document_content
from local.sandbox.validation import InvalidParameters, resolve_parameters
from tests.documents.steps_support import ok
from tests.documents.switch_support import (
    PRIMARY_UNIT,
    ROUTER_UNIT,
    Backends,
    Clients,
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

UNIT_B = "asoba-inference@model-b.service"
UNIT_C = "asoba-inference@model-c.service"


def etc_files(sandbox: Sandbox) -> dict[str, str]:
    return {path: digest for path, digest in sandbox.tree_files().items() if path.startswith("etc/")}


def router_in_front_of_b(aws: Aws, sandbox: Sandbox, backends: Backends) -> tuple[int, int, int]:
    """B and C running on ports of their own, and the router on the stable port in front of B
    (a first switch where nothing served yet); the stable port, B's and C's."""
    stable, port_b, port_c = free_port(), free_port(), free_port()
    backends.add(UNIT_B, port_b, "model-b")
    backends.add(UNIT_C, port_c, "model-c")
    first = ok(run_document(aws.ssm, sandbox, "switch", **switch_values(stable, port_b, "model-b", UNIT_B)))
    assert (first["router"], first["generation"], first["gap_s"], first["old_unit"]) == (
        "started",
        1,
        None,
        None,
    )
    assert who(stable) == "model-b"
    return stable, port_b, port_c


def test_the_first_switch_puts_the_router_in_front_while_the_old_unit_finishes(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the primary serving model-a on the stable port itself, with its MCP discovery
    # profile, and model-b started and healthy on a spare port
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b = free_port(), free_port()
    backends.add(PRIMARY_UNIT, stable, "model-a")
    backends.add(UNIT_B, port_b, "model-b")
    (sandbox.profile_dir / "asoba-inference.sh").write_text(f"export ASOBA_INFERENCE_PORT={stable}\n")
    # And a request in flight on model-a
    slow = SlowRequest(stable)
    wait_until(lambda: backends.slow_started("model-a"), "model-a to hold the slow request")

    # When the switch moves the stable port to model-b
    command = send_document(
        aws.ssm,
        sandbox,
        "switch",
        **switch_values(stable, port_b, "model-b", UNIT_B, old_unit=PRIMARY_UNIT, old_port=stable),
    )

    # Then the router listens on the stable port and sends to model-b while model-a is still
    # finishing its request (its stop waits for it)
    wait_until(lambda: router_status(stable) is not None, "the router on the stable port")
    assert who(stable) == "model-b"
    assert state(sandbox, PRIMARY_UNIT) == "deactivating"
    # And model-a's request completes
    backends.open_gate()
    assert slow.result() == (200, {"name": "model-a", "path": "/slow"})
    result = ok(wait_invocation(aws.ssm, sandbox, command))
    # And the result says what happened, with the downtime of putting the router in front
    assert {k: result[k] for k in result if k not in ("gap_s", "drained_in_s", "switched_at")} == {
        "ok": True,
        "router": "started",
        "stable_port": stable,
        "backend": backend(port_b, "model-b", UNIT_B),
        "previous_backend": None,
        "generation": 1,
        "drain_timed_out": False,
        "old_unit": PRIMARY_UNIT,
        "old_unit_stopped": True,
        "already_switched": False,
    }
    assert isinstance(result["gap_s"], float) and 0 <= result["gap_s"] < 20
    assert isinstance(result["drained_in_s"], float) and result["drained_in_s"] >= result["gap_s"]
    # (model-a still had its request when the SIGTERM came, and this test's probes of the
    # stable port may have had one more: the stop let them finish)
    assert (backends.in_flight_at_sigterm("model-a") or 0) >= 1

    # And the old unit is stopped and disabled (a boot must not give it the port back), its unit
    # file kept; the router's unit is enabled
    assert (state(sandbox, PRIMARY_UNIT), state(sandbox, PRIMARY_UNIT, "UnitFileState")) == (
        "inactive",
        "disabled",
    )
    assert (sandbox.unit_dir / PRIMARY_UNIT).is_file()
    assert (state(sandbox, ROUTER_UNIT), state(sandbox, ROUTER_UNIT, "UnitFileState")) == (
        "active",
        "enabled",
    )
    unit = (sandbox.unit_dir / ROUTER_UNIT).read_text()
    assert f"ExecStart={sandbox.runtime_root}/venv/bin/python -m instance_runtime.router" in unit
    assert f"EnvironmentFile={sandbox.env_dir}/router.env" in unit.splitlines()
    assert not re.search(r"@[A-Z_]+@", unit)
    env = (sandbox.env_dir / "router.env").read_text().splitlines()
    assert {
        "ROUTER_HOST=0.0.0.0",
        f"ROUTER_PORT={stable}",
        f"ROUTER_CONFIG={sandbox.env_dir}/router.json",
    } <= set(env)
    assert router_config(sandbox) == {"backend": backend(port_b, "model-b", UNIT_B), "generation": 1}
    # And MCP discovery names the stable port
    profile = (sandbox.profile_dir / "asoba-inference.sh").read_text().splitlines()
    assert {
        f"export MISTRAL_STATUS_URL=http://localhost:{stable}/status",
        "export MISTRAL_FALLBACK_IP=127.0.0.1",
        f"export ASOBA_INFERENCE_PORT={stable}",
    } <= set(profile)
    # And the same switch again changes nothing
    before = sandbox.tree_digest()
    again = ok(
        run_document(
            aws.ssm,
            sandbox,
            "switch",
            **switch_values(stable, port_b, "model-b", UNIT_B, old_unit=PRIMARY_UNIT, old_port=stable),
        )
    )
    assert (again["already_switched"], again["router"], again["generation"]) == (True, "reloaded", 1)
    assert (again["gap_s"], again["old_unit_stopped"]) == (None, False)
    assert sandbox.tree_digest() == before
    assert who(stable) == "model-b"


def test_a_second_switch_drops_no_request_and_drains_the_old_backend_first(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the router in front of model-b, and model-c started on a spare port
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, port_c = router_in_front_of_b(aws, sandbox, backends)

    # And clients looping on the stable port, one on a keep-alive connection, one with a new
    # connection per request, and a slow request in flight on model-b
    with Clients(stable) as clients:
        wait_until(lambda: clients.count("model-b") >= 20, "answers from model-b")
        slow = SlowRequest(stable)
        wait_until(lambda: backends.slow_started("model-b"), "model-b to hold the slow request")

        # When the switch moves the stable port to model-c
        command = send_document(
            aws.ssm,
            sandbox,
            "switch",
            **switch_values(stable, port_c, "model-c", UNIT_C, old_unit=UNIT_B, old_port=port_b),
        )

        # Then new requests go to model-c, on both kinds of connection, while model-b keeps
        # running: the switch waits for the request still in flight there
        wait_until(lambda: (router_status(stable) or {}).get("generation") == 2, "generation 2")
        wait_until(
            lambda: {"keep-alive", "new-connection"} <= {c for c, n in clients.answers if n == "model-c"},
            "both clients answered by model-c",
        )
        # (a client's request to model-b from just before the switch may still be finishing)
        wait_until(
            lambda: (router_status(stable) or {}).get("in_flight", {}).get(str(port_b)) == 1,
            "only the slow request in flight to model-b",
        )
        assert state(sandbox, UNIT_B) == "active"
        invocation = aws.ssm.get_command_invocation(CommandId=command, InstanceId=sandbox.instance_id)
        assert invocation["Status"] == "InProgress"
        # And once the slow request completes (on model-b, where it started), the switch ends
        backends.open_gate()
        assert slow.result() == (200, {"name": "model-b", "path": "/slow"})
        result = ok(wait_invocation(aws.ssm, sandbox, command))
        wait_until(lambda: clients.count("model-c") >= 20, "more answers from model-c")

    # And not one request failed
    assert clients.failures == []
    assert clients.count("model-b") >= 20 and clients.count("model-c") >= 20
    # And model-b was stopped only once nothing was in flight to it, and disabled
    assert backends.in_flight_at_sigterm("model-b") == 0
    assert (state(sandbox, UNIT_B), state(sandbox, UNIT_B, "UnitFileState")) == ("inactive", "disabled")
    assert (sandbox.unit_dir / UNIT_B).is_file()
    assert {k: result[k] for k in result if k not in ("drained_in_s", "switched_at")} == {
        "ok": True,
        "router": "reloaded",
        "stable_port": stable,
        "backend": backend(port_c, "model-c", UNIT_C),
        "previous_backend": backend(port_b, "model-b", UNIT_B),
        "generation": 2,
        "gap_s": None,
        "drain_timed_out": False,
        "old_unit": UNIT_B,
        "old_unit_stopped": True,
        "already_switched": False,
    }
    assert isinstance(result["drained_in_s"], float) and result["drained_in_s"] > 0
    # the moment the stable port answered from model-c, on the instance's clock
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(result["switched_at"]))
    assert router_config(sandbox) == {"backend": backend(port_c, "model-c", UNIT_C), "generation": 2}
    # And answers now come from model-c
    assert {who(stable) for _ in range(10)} == {"model-c"}
    # And the saved router.json is model-b's, for a rollback
    saved = (sandbox.state_dir / "switch" / "router.json.previous").read_text()
    assert f'"port": {port_b}' in saved


def test_a_drain_that_does_not_end_is_bounded(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given the router in front of model-b, which holds a request that does not end
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, port_c = router_in_front_of_b(aws, sandbox, backends)
    slow = SlowRequest(stable)
    wait_until(lambda: backends.slow_started("model-b"), "model-b to hold the slow request")

    # (which ends once model-b was told to stop)
    def release_on_sigterm() -> None:
        wait_until(lambda: backends.in_flight_at_sigterm("model-b") is not None, "model-b's SIGTERM")
        backends.open_gate()

    releaser = threading.Thread(target=release_on_sigterm, daemon=True)
    releaser.start()

    # When the switch to model-c may drain for 1 s
    run = run_document(
        aws.ssm,
        sandbox,
        "switch",
        **switch_values(stable, port_c, "model-c", UNIT_C, old_unit=UNIT_B, old_port=port_b),
        DrainSeconds=1,
    )

    # Then it stops model-b anyway and says so
    result = ok(run)
    assert (result["drain_timed_out"], result["old_unit_stopped"]) == (True, True)
    assert isinstance(result["drained_in_s"], float) and result["drained_in_s"] >= 1
    assert backends.in_flight_at_sigterm("model-b") == 1
    # And model-b's own stop still let the request finish
    assert slow.result() == (200, {"name": "model-b", "path": "/slow"})
    assert who(stable) == "model-c"


def test_a_switch_killed_at_its_timeout_is_finished_by_the_same_switch_again(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the router in front of model-b, which holds a request in flight
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, port_c = router_in_front_of_b(aws, sandbox, backends)
    slow = SlowRequest(stable)
    wait_until(lambda: backends.slow_started("model-b"), "model-b to hold the slow request")
    values = switch_values(stable, port_c, "model-c", UNIT_C, old_unit=UNIT_B, old_port=port_b)

    # When the switch to model-c is killed at its 5 s timeout while it drains model-b
    killed = run_document(aws.ssm, sandbox, "switch", **values, executionTimeout=5)
    assert killed.status == "TimedOut", killed.explain()
    assert (who(stable), state(sandbox, UNIT_B)) == ("model-c", "active")

    # And the same switch runs again once the request is done
    backends.open_gate()
    assert slow.result()[0] == 200
    result = ok(run_document(aws.ssm, sandbox, "switch", **values))

    # Then it finishes the job without a new generation, and its record still holds model-b
    assert (result["already_switched"], result["generation"], result["old_unit_stopped"]) == (True, 2, True)
    assert result["previous_backend"] == backend(port_b, "model-b", UNIT_B)
    assert (state(sandbox, UNIT_B), state(sandbox, UNIT_B, "UnitFileState")) == ("inactive", "disabled")
    assert router_config(sandbox) == {"backend": backend(port_c, "model-c", UNIT_C), "generation": 2}


def test_a_backend_that_does_not_answer_health_changes_nothing(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given model-a on the stable port, and model-b's unit running but nothing on the port named
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, silent = free_port(), free_port(), free_port()
    backends.add(PRIMARY_UNIT, stable, "model-a")
    backends.add(UNIT_B, port_b, "model-b")
    before, processes = sandbox.tree_digest(), sandbox.processes()

    run = run_document(
        aws.ssm,
        sandbox,
        "switch",
        **switch_values(stable, silent, "model-b", UNIT_B, old_unit=PRIMARY_UNIT, old_port=stable),
    )

    # Then it fails naming the backend, and nothing changed: no file, no unit, model-a serves
    assert run.status == "Failed", run.explain()
    assert run.result is not None and run.result["ok"] is False
    error = str(run.result["error"])
    assert f"does not answer /health on 127.0.0.1:{silent}" in error and error.endswith("nothing changed")
    assert sandbox.tree_digest() == before
    assert sandbox.processes() == processes
    assert who(stable) == "model-a"


def test_parameters_that_contradict_what_serves_change_nothing(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the router in front of model-b
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, port_c = router_in_front_of_b(aws, sandbox, backends)
    before = sandbox.tree_digest()

    # When a switch names an old unit the router does not send to, or the stable port as its port
    wrong_unit = run_document(
        aws.ssm,
        sandbox,
        "switch",
        **switch_values(stable, port_c, "model-c", UNIT_C, old_unit=PRIMARY_UNIT, old_port=port_b),
    )
    wrong_port = run_document(
        aws.ssm,
        sandbox,
        "switch",
        **switch_values(stable, port_c, "model-c", UNIT_C, old_unit=UNIT_B, old_port=stable),
    )

    # Then both fail before changing anything
    for run, expected in (
        (wrong_unit, f"sends port {stable} to {UNIT_B} on port {port_b}, not to OldUnit {PRIMARY_UNIT}"),
        (wrong_port, "OldPort is the port of the backend behind it"),
    ):
        assert run.status == "Failed", run.explain()
        assert run.result is not None and expected in str(run.result["error"]), run.explain()
    assert sandbox.tree_digest() == before
    assert who(stable) == "model-b"


def test_a_failure_after_router_json_is_written_restores_it(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given the router in front of model-b (generation 1), and a systemctl that cannot stop model-b
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    backends = Backends(sandbox)
    stable, port_b, port_c = router_in_front_of_b(aws, sandbox, backends)
    faults = tmp_path / "faults"
    faults.mkdir()
    shim = sandbox.shim_env()["PATH"].split(":")[0]
    wrapper = faults / "systemctl"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'if [[ "$1" == stop && "$2" == {UNIT_B} ]]; then\n'
        '  echo "Failed to stop unit: injected fault" >&2\n'
        "  exit 1\n"
        "fi\n"
        f'exec {shim}/systemctl "$@"\n'
    )
    wrapper.chmod(0o755)
    sandbox.extra_env["PATH"] = f"{faults}:{sandbox.shim_env()['PATH']}"

    # When the switch to model-c fails at its last step, after the router moved to model-c
    run = run_document(
        aws.ssm,
        sandbox,
        "switch",
        **switch_values(stable, port_c, "model-c", UNIT_C, old_unit=UNIT_B, old_port=port_b),
    )

    # Then it fails saying why and what it put back
    assert run.status == "Failed", run.explain()
    assert run.result is not None
    b = backend(port_b, "model-b", UNIT_B)
    assert run.result["error"] == (
        f"systemctl stop {UNIT_B} failed: Failed to stop unit: injected fault; restored router.json "
        f'(generation 3: {{"port": {port_b}, "model": "model-b", "unit": "{UNIT_B}"}}) '
        f"and reloaded {ROUTER_UNIT}"
    )
    # And router.json names model-b again, in a generation of its own, which the router serves
    assert router_config(sandbox) == {"backend": b, "generation": 3}
    status = router_status(stable)
    assert status is not None and (status["backend"], status["generation"]) == (b, 3)
    assert who(stable) == "model-b"
    assert state(sandbox, UNIT_B) == "active" and state(sandbox, UNIT_B, "UnitFileState") == "enabled"
    assert (sandbox.state_dir / "switch" / "restored").is_file()


def test_a_router_that_does_not_start_gives_the_stable_port_back(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given model-a on the stable port with its profile, model-b on a spare port, and a runtime
    # whose router exits at once
    sandbox = make_sandbox()
    lay_out_runtime(sandbox)
    (sandbox.runtime_root / "instance_runtime" / "router.py").write_text(
        'raise SystemExit("router: broken on purpose")\n'
    )
    backends = Backends(sandbox)
    stable, port_b = free_port(), free_port()
    backends.add(PRIMARY_UNIT, stable, "model-a")
    backends.add(UNIT_B, port_b, "model-b")
    (sandbox.profile_dir / "asoba-inference.sh").write_text(f"export ASOBA_INFERENCE_PORT={stable}\n")
    before = etc_files(sandbox)

    # When the first switch to model-b waits 2 s for the router
    run = run_document(
        aws.ssm,
        sandbox,
        "switch",
        **switch_values(stable, port_b, "model-b", UNIT_B, old_unit=PRIMARY_UNIT, old_port=stable),
        RouterWaitSeconds=2,
    )

    # Then it fails saying so, with the router's last word, and what it put back
    assert run.status == "Failed", run.explain()
    assert run.result is not None
    error = str(run.result["error"])
    assert error.startswith(f"{ROUTER_UNIT} did not listen on port {stable} within 2 s"), error
    assert error.endswith(f"; stopped {ROUTER_UNIT} and put its files back, started {PRIMARY_UNIT} again"), (
        error
    )
    # And model-a serves on the stable port again, enabled; the router is gone, its files too
    assert who(stable) == "model-a"
    assert state(sandbox, PRIMARY_UNIT, "UnitFileState") == "enabled"
    assert state(sandbox, ROUTER_UNIT) == "inactive"
    assert etc_files(sandbox) == before


def test_hostile_parameters_are_refused(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    stable, port = free_port(), free_port()
    base: dict[str, str | int] = {
        "StablePort": stable,
        "BackendPort": port,
        "BackendModel": "model-b",
        "BackendUnit": UNIT_B,
    }
    before = sandbox.tree_digest()
    for name, value in (
        ("StablePort", "8001; reboot"),
        ("BackendPort", "$(id)"),
        ("BackendModel", "model'b"),
        ("BackendModel", "../etc"),
        ("BackendUnit", "a.service\nb.service"),
        ("OldUnit", "`id`.service"),
        ("OldPort", "80 "),
        ("DrainSeconds", "-1"),
        ("RouterUnit", "asoba-router.service;reboot"),
        ("StateDir", "/var/lib/../etc"),
    ):
        with pytest.raises(ClientError) as refused:
            send_document(aws.ssm, sandbox, "switch", **(base | {name: value}))
        assert refused.value.response["Error"]["Code"] == "InvalidParameters", (name, value)
    assert aws.ssm.list_commands(InstanceId=sandbox.instance_id)["Commands"] == []
    assert sandbox.tree_digest() == before


@pytest.mark.parametrize(
    ("parameter", "good", "bad"),
    [
        ("StablePort", ["8001", "10", "65535"], ["", "0", "080", "123456", "8001 "]),
        ("OldPort", ["", "8002"], ["0", "x", "8002 8003"]),
        (
            "OldUnit",
            ["", "asoba-inference.service", "asoba-inference@qwen2.5-0.5b.service"],
            ["a", "../a.service", "a.service b.service", "$(id).service"],
        ),
        ("BackendModel", ["smollm2", "Qwen2.5-0.5B"], ["", "-x", "a b", 'a"b', "x" * 129]),
        ("DrainSeconds", ["1", "9999"], ["0", "10000", ""]),
    ],
)
def test_parameter_patterns(parameter: str, good: list[str], bad: list[str]) -> None:
    spec = {parameter: document_content("switch")["parameters"][parameter]}
    for value in good:
        assert resolve_parameters(spec, {parameter: [value]})[parameter] == value
    for value in bad:
        with pytest.raises(InvalidParameters):
            resolve_parameters(spec, {parameter: [value]})


def test_the_router_block_is_the_same_in_switch_and_rollback() -> None:
    # What puts the router back after a failed switch is what rollback runs after a killed one
    start, end = "# --- router: what switch and rollback share", "# --- end router ---"
    blocks = set()
    for name in ("switch", "rollback"):
        script = "\n".join(document_content(name)["mainSteps"][-1]["inputs"]["runCommand"])
        blocks.add(script[script.index(start) : script.index(end)])
    assert len(blocks) == 1
