"""The CLI's progress while steps run at once (the Prepare group: sync | install), the progress
bar of a long step from its command's progress lines, and the time to healthy beside the plan's."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from asoba_deploy.cli.follow import CommandOutput, Progress, _Running, follow, progress_text
from asoba_deploy.cli.render import PLAIN, Term, time_to_healthy_line
from asoba_deploy.core import steps
from asoba_deploy.core.ledger import TimeToHealthy

INSTANCE = "i-0123456789abcdef0"


def command(step: str, **extra: Any) -> dict[str, Any]:
    registered = steps.by_key(step)
    return {
        "step": step,
        "document": f"AsobaModelDeploy-{registered.name}",
        "plugins": list(registered.plugins),
        "command_id": f"cmd-{step}",
        "instance_id": INSTANCE,
        "sent_at": 0.0,
        "first_sent_at": 0.0,
        "deadline": 3600.0,
        **extra,
    }


class History:
    """Events of a made-up execution, one second apart, ids chained as AWS chains them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = [
            {"type": "ExecutionStarted", "id": 1, "timestamp": "2026-01-01T00:00:00+00:00"}
        ]

    def add(self, kind: str, name: str | None = None, output: Any = None, **details: Any) -> None:
        event: dict[str, Any] = {
            "type": kind,
            "id": len(self.events) + 1,
            "previousEventId": len(self.events),
            "timestamp": f"2026-01-01T00:{len(self.events) // 60:02d}:{len(self.events) % 60:02d}+00:00",
        }
        if name is not None:
            key = "stateEnteredEventDetails" if kind.endswith("Entered") else "stateExitedEventDetails"
            event[key] = {"name": name, **({"output": json.dumps(output)} if output is not None else {})}
        if details:
            event["lambdaFunctionFailedEventDetails"] = details
        self.events.append(event)

    def sent(self, label: str, key: str) -> None:
        self.add("TaskStateEntered", label)
        self.add("TaskStateExited", label, {"command": command(key)})

    def finished(self, label: str, key: str, result: dict[str, Any]) -> None:
        done = command(key, status="Success", result=result)
        self.add("PassStateEntered", f"{label}.Result")
        self.add("PassStateExited", f"{label}.Result", {"steps": {key: done}, "command": done})


def fed(history: History, term: Term = PLAIN) -> tuple[Progress, list[str]]:
    out = io.StringIO()
    progress = Progress(out, term)
    for event in history.events:
        progress.feed(event)
    return progress, out.getvalue().splitlines()


def verbs(lines: list[str]) -> list[tuple[str, str]]:
    """(verb, step) of each line: '   0:03.0  start  sync' -> ('start', 'sync')."""
    found = []
    for line in lines:
        match = re.match(r"\s*\d+:\d+\.\d\s+(\S+)\s+(\S+)", line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


SYNCED = {"ok": True, "bytes_transferred": 4096, "seconds": 2.0, "files_transferred": 2, "files_total": 2}


def test_sync_and_install_run_at_once_and_each_ends_on_its_own() -> None:
    # Given a history where Prepare runs both branches, their events interleaved, install ending first
    history = History()
    history.add("ParallelStateEntered", "Prepare")
    history.sent("Sync", "sync")
    history.sent("Install", "install")
    history.add("TaskStateEntered", "Sync.Await")
    history.add("TaskStateEntered", "Install.Await")
    history.finished("Install", "install", {"ok": True, "unit": "asoba-inference.service", "port": 8001})
    progress, _ = fed(history)
    # Then while sync still runs, both started, install is done and sync goes on
    assert [step.name for step in progress.running.values()] == ["sync"]
    history.finished("Sync", "sync", SYNCED)
    history.add("ParallelStateExited", "Prepare")
    history.sent("StartService", "start_service")
    history.finished("StartService", "start_service", {"ok": True, "state": "active"})
    history.add("SucceedStateEntered", "Deployed")
    _, lines = fed(history)
    assert verbs(lines) == [
        ("start", "sync"),
        ("start", "install"),
        ("done", "install"),
        ("done", "sync"),
        ("start", "start-service"),
        ("done", "start-service"),
        ("end", "Deployed"),
    ]
    sync = next(line for line in lines if re.search(r"done\s+sync\s", line))
    assert "4.0 KiB in 2.0 s" in sync


def test_a_failed_branch_fails_its_step_and_stops_the_other() -> None:
    # Given install failing while the sync still runs
    history = History()
    history.add("ParallelStateEntered", "Prepare")
    history.sent("Sync", "sync")
    history.sent("Install", "install")
    history.add("TaskStateEntered", "Sync.Await")
    history.add("TaskStateEntered", "Install.Await")
    history.add(
        "LambdaFunctionFailed", error="InstallFailed", cause='{"errorMessage": "pip: no such package"}'
    )
    history.add("ParallelStateFailed")
    history.add("TaskStateEntered", "Rollback")
    _, lines = fed(history)
    # Then install fails with its error, sync is reported stopped (not failed), rollback starts
    assert verbs(lines)[-3:] == [("FAIL", "install"), ("stop", "sync"), ("start", "rollback")]
    failed = next(line for line in lines if re.search(r"FAIL\s+install\s", line))
    assert "InstallFailed: pip: no such package" in failed
    assert "another step failed" in next(line for line in lines if re.search(r"stop\s+sync\s", line))


def test_progress_text_has_bytes_rate_and_eta() -> None:
    line = {"bytes": 512 * 1024**2, "total_bytes": 2 * 1024**3, "rate": 100 * 1024**2, "eta_s": 15}
    assert progress_text(line) == "512.0 MiB of 2.0 GiB (25%), 100.0 MiB/s, ETA 15.0 s"
    assert progress_text({"status": "loading", "elapsed_s": 3.5}) == "loading"
    assert progress_text({"elapsed_s": 3.5}) == "3.5 s so far"
    assert progress_text(None) == ""


class FakeLogs:
    """get_log_events over a stream that grows between reads, with forward tokens."""

    def __init__(self) -> None:
        self.streams: dict[str, list[str]] = {}
        self.calls: list[dict[str, Any]] = []

    def get_log_events(self, **request: Any) -> dict[str, Any]:
        self.calls.append(request)
        lines = self.streams.get(request["logStreamName"])
        if lines is None:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetLogEvents")
        start = int(request.get("nextToken", "f/0").split("/")[1])
        return {
            "events": [{"message": line} for line in lines[start:]],
            "nextForwardToken": f"f/{len(lines)}",
        }


def test_the_sync_s_progress_lines_become_a_live_bar() -> None:
    # Given the sync running (its command known), its progress lines streamed to the log group
    history = History()
    history.add("ParallelStateEntered", "Prepare")
    history.sent("Sync", "sync")
    progress, _ = fed(history, Term(color=True, live=False, width=120))
    logs = FakeLogs()
    output = CommandOutput(logs, "/asoba/ssm")
    stream = f"cmd-sync/{INSTANCE}/sync/stderr"
    # When nothing was written yet, then two progress lines (and other stderr) arrive
    output.update(progress)
    assert progress.running["Sync"].progress is None
    logs.streams[stream] = [
        '{"progress": {"step": "sync", "bytes": 100, "total_bytes": 400, "rate": 50, "eta_s": 6}}',
        "some warning",
        '{"progress": {"step": "sync", "bytes": 200, "total_bytes": 400, "rate": 50, "eta_s": 4}}',
    ]
    output.update(progress)
    # Then the step shows the last one, read from the registry's stream of that command
    assert logs.calls[-1]["logStreamName"] == stream
    assert progress.running["Sync"].progress == {
        "step": "sync",
        "bytes": 200,
        "total_bytes": 400,
        "rate": 50,
        "eta_s": 4,
    }
    # and the next read starts where this one ended
    logs.streams[stream].append(
        '{"progress": {"step": "sync", "bytes": 400, "total_bytes": 400, "rate": 60}}'
    )
    before = len(logs.calls)
    output.update(progress)
    assert logs.calls[before]["nextToken"] == "f/3"
    latest = progress.running["Sync"].progress
    assert latest is not None and latest["bytes"] == 400
    # the live view draws a bar with the numbers under the step's line
    console = Console(file=io.StringIO(), width=120, color_system=None, record=True)
    progress.running["Sync"].progress = {"bytes": 200, "total_bytes": 400, "rate": 50, "eta_s": 4}
    console.print(_Running(progress))
    drawn = console.export_text()
    assert re.search(r"sync\s+\d+\.\d s", drawn)
    assert "200 B of 400 B (50%), 50 B/s, ETA 4.0 s" in drawn
    assert "━" in drawn  # the bar


def test_follow_reads_the_progress_of_running_steps_each_round() -> None:
    # Given an execution that runs the sync for three rounds
    history = History()
    history.sent("Sync", "sync")
    rounds: Iterator[int] = iter(range(100))

    class Sfn:
        def describe_execution(self, executionArn: str) -> dict[str, Any]:
            return {"status": "RUNNING" if next(rounds) < 3 else "SUCCEEDED", "output": "{}"}

        def get_execution_history(self, **request: Any) -> dict[str, Any]:
            return {"events": history.events}

    logs = FakeLogs()
    logs.streams[f"cmd-sync/{INSTANCE}/sync/stderr"] = ['{"progress": {"bytes": 7, "total_bytes": 9}}']
    out = io.StringIO()
    progress = Progress(out, PLAIN, clock=lambda: 0.0)
    finished = follow(Sfn(), "arn", progress, sleep=lambda _: None, output=CommandOutput(logs, "/g"))
    assert finished.status == "SUCCEEDED"
    # read in each of the three rounds it ran (the first reads on to the stream's end)
    assert len(logs.calls) == 4
    assert {call["logStreamName"] for call in logs.calls} == {f"cmd-sync/{INSTANCE}/sync/stderr"}
    assert progress.steps[-1].progress == {"bytes": 7, "total_bytes": 9}


@pytest.mark.parametrize(
    ("timing", "expected"),
    [
        (
            TimeToHealthy(
                estimate_s=40.0,
                actual_s=50.0,
                transfer_s=20.0,
                install_s=6.0,
                load_s=20.0,
                estimated_parts={"transfer_s": 20.0, "install_s": 8.0, "load_s": 10.0, "warmup_s": 2.0},
            ),
            "50.0 s, estimate 40.0 s (+25%, within +-30%); sync 20.0 s (est. 20.0 s), "
            "install 6.0 s (est. 8.0 s), load 20.0 s (est. 12.0 s)",
        ),
        (TimeToHealthy(estimate_s=10.0, actual_s=20.0), "20.0 s, estimate 10.0 s (+100%, outside +-30%)"),
        (TimeToHealthy(actual_s=20.0, load_s=3.0), "20.0 s, no estimate; load 3.0 s"),
        (TimeToHealthy(), ""),
    ],
)
def test_the_time_to_healthy_beside_the_estimate(timing: TimeToHealthy, expected: str) -> None:
    assert time_to_healthy_line(timing) == expected
