"""evict: resident models' units stopped and disabled until their GPU memory is released, within
WaitSeconds; nothing removed; an inactive unit is fine, memory that stays held is a failure. With
WaitForSync, nothing stops before this execution's sync is complete."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from local.sandbox import Sandbox, run_document, send_document, wait_invocation
from tests.documents.steps_support import ok
from tests.fixtures import Aws

MIB = 1024 * 1024


def add_unit(sandbox: Sandbox, unit: str, *, start: bool = True) -> None:
    """An enabled unit whose process sleeps (a resident model stand-in)."""
    script = sandbox.root / "opt" / "sleeper.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("import time\ntime.sleep(600)\n")
    (sandbox.unit_dir / unit).write_text(
        f"[Service]\nType=simple\nExecStart={sys.executable} {script}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    sandbox.systemctl("daemon-reload")
    sandbox.systemctl("enable", unit)
    if start:
        sandbox.systemctl("start", unit)


def state(sandbox: Sandbox, unit: str, prop: str) -> str:
    return sandbox.systemctl("show", unit, f"--property={prop}", "--value").stdout.strip()


def test_evicted_units_are_stopped_disabled_and_their_gpu_memory_released(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the primary and two residents holding GPU memory (one releases it a second after it
    # stops, as a CUDA context being torn down), and a third resident already stopped
    sandbox = make_sandbox(gpu=True)
    a, b, c = (f"asoba-inference@model-{x}.service" for x in "abc")
    for unit in ("asoba-inference.service", a, b):
        add_unit(sandbox, unit)
    add_unit(sandbox, c, start=False)
    sandbox.set_gpu_claim("asoba-inference.service", 5000)
    sandbox.set_gpu_claim(a, 3000, linger_s=1.0)
    sandbox.set_gpu_claim(b, 2000)
    primary_pid = sandbox.processes()["asoba-inference.service"]
    files = {path for path in sandbox.tree_files() if path.startswith("etc/")}

    # When evict runs for the three of them
    started = time.monotonic()
    result = ok(run_document(aws.ssm, sandbox, "evict", Units=f"{a} {b} {c}", WaitSeconds="20"))

    # Then each is reported with what it was and the GPU memory it gave back
    assert result["evicted"] == [
        {"unit": a, "was": "active", "gpu_memory_freed_bytes": 3000 * MIB},
        {"unit": b, "was": "active", "gpu_memory_freed_bytes": 2000 * MIB},
        {"unit": c, "was": "inactive", "gpu_memory_freed_bytes": 0},
    ]
    assert result["gpu_memory_freed_bytes"] == 5000 * MIB
    # it waited for the lingering memory
    assert time.monotonic() - started >= 1.0
    # And they are stopped and disabled (a boot would not start them), their files all there
    for unit in (a, b, c):
        assert state(sandbox, unit, "ActiveState") == "inactive"
        assert state(sandbox, unit, "UnitFileState") == "disabled"
    after = {path for path in sandbox.tree_files() if path.startswith("etc/")}
    assert after == files - {f"etc/systemd/system/multi-user.target.wants/{u}" for u in (a, b, c)}
    # And the primary is untouched
    assert sandbox.processes() == {"asoba-inference.service": primary_pid}
    assert state(sandbox, "asoba-inference.service", "UnitFileState") == "enabled"


def test_gpu_memory_that_stays_held_fails_with_the_unit_named(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a resident whose process's GPU memory is never released once it stopped
    sandbox = make_sandbox(gpu=True)
    unit = "asoba-inference@stuck.model.service"
    add_unit(sandbox, unit)
    sandbox.set_gpu_claim(unit, 4096, linger_s=None)
    pid = sandbox.processes()[unit]

    run = run_document(aws.ssm, sandbox, "evict", Units=unit, WaitSeconds="2")

    # Then it fails after WaitSeconds, saying which unit and process hold how much
    assert run.status == "Failed", run.explain()
    assert run.result == {
        "ok": False,
        "error": f"evict: 2 s after systemctl stop: {unit} stopped, "
        f"but PID {pid} still holds 4096 MiB of GPU memory",
    }
    assert state(sandbox, unit, "ActiveState") == "inactive"


def test_a_unit_that_does_not_exist_is_already_evicted(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    sandbox = make_sandbox(gpu=False)
    before = sandbox.tree_digest()
    result = ok(run_document(aws.ssm, sandbox, "evict", Units="asoba-inference@gone.service"))
    assert result["evicted"] == [
        {"unit": "asoba-inference@gone.service", "was": "inactive", "gpu_memory_freed_bytes": 0}
    ]
    assert sandbox.tree_digest() == before


def test_units_are_one_to_sixteen_unit_names() -> None:
    from local.sandbox.documents import document_content

    spec = document_content("evict")["parameters"]["Units"]
    assert "default" not in spec  # required: an evict of nothing is a caller's mistake
    pattern = spec["allowedPattern"]
    sixteen = " ".join(f"asoba-inference@m{i}.service" for i in range(16))
    for value in (
        "asoba-inference@qwen2.5-0.5b.service",
        "flux-api.service asoba-inference.service",
        sixteen,
    ):
        assert re.fullmatch(pattern, value), value
    for bad in (
        "",
        "a.service ",
        "a.service  b.service",
        "a.service;b.service",
        "a.service\nb.service",
        "../a.service",
        "a",
        sixteen + " x.service",
    ):
        assert not re.fullmatch(pattern, bad), bad


def test_with_wait_for_sync_the_units_serve_until_this_executions_sync_is_complete(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a resident serving, and the new model's folder holding an earlier sync's marker
    sandbox = make_sandbox(gpu=False)
    unit = "asoba-inference@old.service"
    add_unit(sandbox, unit)
    folder = sandbox.models_root / "new-model"
    folder.mkdir(parents=True)
    (folder / ".asoba-synced").write_text("an-earlier-execution\n")
    wait = {"ModelPath": str(folder), "WaitForSync": "true", "ExecutionName": "this-execution"}

    # When evict runs while this execution's sync still copies
    command_id = send_document(aws.ssm, sandbox, "evict", Units=unit, SyncWaitSeconds="60", **wait)
    time.sleep(1.5)

    # Then the resident still serves, the command waiting
    assert state(sandbox, unit, "ActiveState") == "active"
    invocation = aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
    assert invocation["Status"] == "InProgress"

    # When the sync completes (its marker names this execution)
    before = datetime.now(UTC)
    (folder / ".asoba-synced").write_text("this-execution\n")
    result = ok(wait_invocation(aws.ssm, sandbox, command_id))

    # Then it stops only now, and says when (the instance's clock: a stop-start's downtime starts)
    assert state(sandbox, unit, "ActiveState") == "inactive"
    assert (result["sync"], result["evicted"]) == (
        "complete",
        [{"unit": unit, "was": "active", "gpu_memory_freed_bytes": 0}],
    )
    assert float(result["waited_s"]) >= 1.5  # type: ignore[arg-type]
    stopped_at = datetime.fromisoformat(str(result["stopped_at"]).replace("Z", "+00:00"))
    assert stopped_at >= before.replace(microsecond=before.microsecond // 1000 * 1000)


def test_a_sync_that_does_not_complete_evicts_nothing(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(gpu=False)
    unit = "asoba-inference@old.service"
    add_unit(sandbox, unit)
    folder = sandbox.models_root / "new-model"

    run = run_document(
        aws.ssm,
        sandbox,
        "evict",
        Units=unit,
        ModelPath=str(folder),
        WaitForSync="true",
        ExecutionName="this-execution",
        SyncWaitSeconds="1",
    )

    assert run.status == "Failed", run.explain()
    assert run.result == {
        "ok": False,
        "error": "nothing evicted: the sync of this-execution did not complete within 1 s "
        f"({folder}/.asoba-synced: absent)",
    }
    assert (state(sandbox, unit, "ActiveState"), state(sandbox, unit, "UnitFileState")) == (
        "active",
        "enabled",
    )
