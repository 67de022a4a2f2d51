"""start-service: the unit install wrote starts only once the sync of this execution completed
(its marker, which the sync writes last, names the execution), at once when streaming, and the
wait for the marker is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from asoba_deploy.core.steps import SYNC_MARKER
from local.sandbox import Sandbox, free_port, run_document, send_document, wait_invocation
from local.sandbox.bundles import fake_runtime_bundle, upload
from tests.documents.steps_support import ok, upload_model
from tests.fixtures import Aws

UNIT = "asoba-inference.service"


def installed(aws: Aws, sandbox: Sandbox, tmp_path: Path, model: str) -> int:
    """The model synced by execution `exec-a` and the service installed (not started)."""
    source = upload_model(aws, model)
    ok(run_document(aws.ssm, sandbox, "sync", ModelName=model, SourceUri=source, ExecutionName="exec-a"))
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/rt.zip")
    port = free_port()
    ok(
        run_document(
            aws.ssm,
            sandbox,
            "install",
            RuntimeBundleUri=bundle,
            ModelName=model,
            ModelPath=str(sandbox.models_root / model),
            Port=str(port),
            Host="127.0.0.1",
        )
    )
    assert UNIT not in sandbox.processes()  # install writes the unit, it does not start it
    return port


def test_the_marker_of_this_execution_starts_the_service(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given a model the sync of exec-a completed, and the service installed
    sandbox = make_sandbox()
    installed(aws, sandbox, tmp_path, "tiny-model")
    marker = sandbox.models_root / "tiny-model" / SYNC_MARKER
    assert marker.read_text() == "exec-a\n"

    # When start-service runs for exec-a
    run = run_document(
        aws.ssm,
        sandbox,
        "start-service",
        ModelPath=str(sandbox.models_root / "tiny-model"),
        ExecutionName="exec-a",
    )

    # Then the unit runs, without waiting
    result = ok(run)
    assert (result["unit"], result["state"], result["sync"], result["waited"]) == (
        UNIT,
        "active",
        "complete",
        False,
    )
    assert result["main_pid"] == sandbox.processes()[UNIT]


def test_a_stale_marker_of_another_execution_does_not_count_and_the_wait_is_bounded(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given a folder whose marker is exec-a's (an earlier deployment of the same model)
    sandbox = make_sandbox()
    installed(aws, sandbox, tmp_path, "tiny-model")

    # When start-service runs for exec-b with a 2 s wait
    began = time.monotonic()
    run = run_document(
        aws.ssm,
        sandbox,
        "start-service",
        ModelPath=str(sandbox.models_root / "tiny-model"),
        ExecutionName="exec-b",
        WaitSeconds="2",
    )

    # Then it fails once its wait is over, naming whose marker it found, and starts nothing
    assert run.status == "Failed", run.explain()
    assert run.result == {
        "ok": False,
        "error": "the sync of exec-b did not complete within 2 s: "
        f"{sandbox.models_root / 'tiny-model' / SYNC_MARKER} is from exec-a",
    }
    assert 2 <= time.monotonic() - began < 60
    assert UNIT not in sandbox.processes()

    # And with no marker at all it says so
    (sandbox.models_root / "tiny-model" / SYNC_MARKER).unlink()
    absent = run_document(
        aws.ssm,
        sandbox,
        "start-service",
        ModelPath=str(sandbox.models_root / "tiny-model"),
        ExecutionName="exec-b",
        WaitSeconds="1",
    )
    assert absent.status == "Failed" and absent.result is not None
    assert absent.result["error"].endswith(f"no {sandbox.models_root / 'tiny-model' / SYNC_MARKER}")


def test_it_waits_until_the_sync_of_this_execution_writes_its_marker(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given the service installed and a marker of another execution
    sandbox = make_sandbox()
    installed(aws, sandbox, tmp_path, "tiny-model")
    folder = sandbox.models_root / "tiny-model"

    # When start-service for exec-c is already waiting, and then exec-c's sync completes
    command_id = send_document(
        aws.ssm, sandbox, "start-service", ModelPath=str(folder), ExecutionName="exec-c", WaitSeconds="120"
    )

    def sync_when_waiting() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
            if status["Status"] == "InProgress":
                break
            time.sleep(0.05)
        ok(
            run_document(
                aws.ssm,
                sandbox,
                "sync",
                ModelName="tiny-model",
                SourceUri=f"s3://{aws.bucket}/models/tiny-model/",
                ExecutionName="exec-c",
            )
        )

    syncing = threading.Thread(target=sync_when_waiting)
    syncing.start()
    run = wait_invocation(aws.ssm, sandbox, command_id, timeout_s=120)
    syncing.join(timeout=60)

    # Then it started the unit once the marker named exec-c, having waited for it
    result = ok(run)
    assert (result["state"], result["waited"]) == ("active", True)
    assert (folder / SYNC_MARKER).read_text() == "exec-c\n"


def test_a_streaming_runtime_starts_at_once_without_a_marker(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given the service installed while its folder has no marker (the copy still goes on)
    sandbox = make_sandbox()
    installed(aws, sandbox, tmp_path, "tiny-model")
    (sandbox.models_root / "tiny-model" / SYNC_MARKER).unlink()

    # When start-service runs with WaitForSync false (the plan's load_from is "stream")
    run = run_document(
        aws.ssm,
        sandbox,
        "start-service",
        ModelPath=str(sandbox.models_root / "tiny-model"),
        WaitForSync="false",
        WaitSeconds="1",
    )

    # Then the unit runs at once
    result = ok(run)
    assert (result["state"], result["sync"], result["waited"]) == ("active", "not awaited (streaming)", False)


def test_waiting_needs_the_execution_name(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    run = run_document(aws.ssm, sandbox, "start-service", ModelPath=str(sandbox.models_root / "m"))
    assert (run.status, run.result) == (
        "Failed",
        {"ok": False, "error": "WaitForSync needs the ExecutionName whose sync must have completed"},
    )
