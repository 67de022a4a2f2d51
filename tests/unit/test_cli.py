"""The deploy-model CLI without AWS: arguments, the plan table, progress lines and error lines.

The recordings in cli_recordings/ are real executions of the synthesized machine in the local
emulator (a dry run, a deploy, and three failures: unknown model, a plan that does not fit, a
health check failure that was rolled back), trimmed to what the CLI reads. Re-record them when
the state machine changes: `.venv/bin/python -m tests.unit.cli_recordings.record`.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from asoba_deploy.cli import commands
from asoba_deploy.cli.follow import HistoryReader, Progress, follow
from asoba_deploy.cli.main import build_parser, main, normalize_argv
from asoba_deploy.cli.render import (
    PLAIN,
    InstanceStatus,
    Term,
    checks_table,
    error_line,
    history_table,
    human_bytes,
    human_seconds,
    plan_table,
    record_summary,
    status_table,
    table,
    unwrap_cause,
)
from asoba_deploy.cli.stack import CliError, StackInfo, endpoint_from_env
from asoba_deploy.core import errors, steps
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.ledger import LedgerRecord
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.state import ExecutionState

RECORDINGS = Path(__file__).parent / "cli_recordings"
ANSI = re.compile(r"\033\[[0-9;]*m")


def recording(name: str) -> dict[str, Any]:
    return dict(json.loads((RECORDINGS / f"{name}.json").read_text()))


def progress_lines(name: str) -> list[str]:
    out = io.StringIO()
    progress = Progress(out, PLAIN)
    for event in recording(name)["events"]:
        progress.feed(event)
    return out.getvalue().splitlines()


def lines_matching(lines: list[str], verb: str, step: str) -> list[str]:
    return [line for line in lines if re.search(rf"\b{verb}\s+{re.escape(step)}(\s|$)", line)]


# ------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["qwen3-14b"], ["deploy", "qwen3-14b"]),
        (["qwen3-14b", "--dry-run"], ["deploy", "qwen3-14b", "--dry-run"]),
        (["--region", "us-east-1", "qwen3-14b"], ["deploy", "--region", "us-east-1", "qwen3-14b"]),
        (["status"], ["status"]),
        (["--region", "eu-west-1", "status", "--json"], ["status", "--region", "eu-west-1", "--json"]),
        (["deploy", "status"], ["deploy", "status"]),  # a model named like a command
        (["undeploy", "--restore-flux"], ["undeploy", "--restore-flux"]),
        (["--dry-run"], ["deploy", "--dry-run"]),
        (["-h"], ["-h"]),
    ],
)
def test_the_model_is_the_default_command(argv: list[str], expected: list[str]) -> None:
    assert normalize_argv(argv) == expected


def test_deploy_options_parse() -> None:
    # Given the seed's command line, with every deploy option
    argv = ["qwen3-14b", "--dry-run", "--force-quantize", "--no-follow", "--port", "8005", "--no-stop-flux"]
    # When it is parsed
    options = build_parser().parse_args(normalize_argv(argv))
    # Then each option lands where the command reads it
    assert options.command == "deploy"
    assert options.model == "qwen3-14b"
    assert (options.dry_run, options.force_quantize, options.no_follow) == (True, True, True)
    assert options.port == 8005
    assert options.no_stop_flux is True
    assert options.stack_name == "AsobaModelDeploy"


@pytest.mark.parametrize("argv", [["qwen3-14b", "--port", "22"], ["qwen3-14b", "--bogus"], ["--dry-run"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: deploy-model" in capsys.readouterr().err


def test_no_arguments_prints_help_and_exits_2() -> None:
    err = io.StringIO()
    assert main([], out=io.StringIO(), err=err) == 2
    assert "deploy-model" in err.getvalue()


def test_an_invalid_model_name_is_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no AWS at all (an unreachable endpoint: any call would fail differently)
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    out, err = io.StringIO(), io.StringIO()
    # When the model name is a path
    code = main(["../etc", "--endpoint-url", "http://127.0.0.1:9"], out=out, err=err)
    # Then the contract's own message, one line, exit 2
    assert code == 2
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith("error: InvalidInput: model: ")
    assert "Traceback" not in err.getvalue()
    assert out.getvalue() == ""


def test_no_region_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    err = io.StringIO()
    assert main(["status"], out=io.StringIO(), err=err) == 2
    assert err.getvalue() == "error: no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION\n"


def test_build_request_sends_only_what_was_chosen() -> None:
    assert commands.build_request("qwen3-14b") == {"model": "qwen3-14b"}
    assert commands.build_request("qwen3-14b", dry_run=True, allow_stop_flux=False, port=8005) == {
        "model": "qwen3-14b",
        "dry_run": True,
        "allow_stop_flux": False,
        "port": 8005,
    }
    with pytest.raises(InvalidInput, match="context_tokens"):
        commands.build_request("qwen3-14b", context_tokens=10)


def test_execution_names_are_valid_and_distinct() -> None:
    names = {commands.execution_name("deploy", "qwen3-14b.v2") for _ in range(5)}
    assert len(names) == 5
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", name)
        assert name.startswith("deploy-qwen3-14b-v2-")


def test_endpoint_comes_from_the_option_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOY_MODEL_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert endpoint_from_env(None) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert endpoint_from_env(None) == "http://127.0.0.1:2"
    monkeypatch.setenv("DEPLOY_MODEL_ENDPOINT_URL", "http://127.0.0.1:1")
    assert endpoint_from_env(None) == "http://127.0.0.1:1"
    assert endpoint_from_env("http://127.0.0.1:3") == "http://127.0.0.1:3"


# ------------------------------------------------------------------------------- the stack


OUTPUTS = {
    "StateMachineArn": "arn:aws:states:us-west-2:123456789012:stateMachine:AsobaModelDeploy-deploy",
    "LedgerTable": "ledger",
    "LockTable": "lock",
    "InstanceIds": "i-0123456789abcdef0,i-0fedcba9876543210",
    "ModelBucket": "asoba-llm-cache",
    "DocumentPrefix": "AsobaModelDeploy-",
    "InstanceRoots": json.dumps(
        {
            "models_root": "/opt/models",
            "runtime_root": "/opt/asoba-inference",
            "unit_dir": "/etc/systemd/system",
            "env_dir": "/etc/asoba-inference",
            "profile_dir": "/etc/profile.d",
            "state_dir": "/var/lib/asoba-inference",
        }
    ),
    "FluxService": "flux-api.service",
}


def test_stack_outputs_name_everything_the_cli_uses() -> None:
    stack = StackInfo.from_outputs("AsobaModelDeploy", OUTPUTS)
    assert stack.instance_ids == ("i-0123456789abcdef0", "i-0fedcba9876543210")
    assert stack.document("undeploy") == "AsobaModelDeploy-undeploy"
    assert stack.choose_instance("i-0fedcba9876543210") == "i-0fedcba9876543210"
    with pytest.raises(CliError, match="choose one with --instance-id"):
        stack.choose_instance(None)
    with pytest.raises(CliError, match="not one of this stack's instances"):
        stack.choose_instance("i-00000000000000000")
    with pytest.raises(CliError, match="lacks the outputs LedgerTable"):
        StackInfo.from_outputs("Other", {k: v for k, v in OUTPUTS.items() if k != "LedgerTable"})


def test_undeploy_parameters_are_the_registry_s_from_the_stack_outputs() -> None:
    # Given a stack whose instance roots are relocated
    roots = dict(json.loads(OUTPUTS["InstanceRoots"]), runtime_root="/srv/runtime")
    stack = StackInfo.from_outputs("AsobaModelDeploy", {**OUTPUTS, "InstanceRoots": json.dumps(roots)})
    config = stack.settings()
    # When the CLI builds the undeploy document's parameters
    parameters = commands.undeploy_parameters(config, "i-0123456789abcdef0", restore_flux=True)
    # Then they are what the registry's undeploy step builds from those settings
    assert parameters == steps.undeploy_parameters(
        config,
        ExecutionState(
            request=DeployRequest(mode="validate"), instance_id="i-0123456789abcdef0", restore_flux=True
        ),
    )
    assert parameters == {
        "RuntimeRoot": "/srv/runtime",
        "StateDir": "/var/lib/asoba-inference",
        "UnitDir": "/etc/systemd/system",
        "EnvDir": "/etc/asoba-inference",
        "ProfileDir": "/etc/profile.d",
        "ServiceUnit": "asoba-inference.service",
        "FluxUnit": "flux-api.service",
        "StartFlux": "true",
    }
    assert commands.undeploy_parameters(config, "i-0123456789abcdef0", restore_flux=False)["StartFlux"] == (
        "false"
    )
    # And the document is the stack's copy of the registry's
    assert config.document("undeploy") == "AsobaModelDeploy-undeploy"


# ------------------------------------------------------------------------------- error lines


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model_not_found", "error: ModelNotFound: model 'no-such-model' not found: nothing under s3://"),
        ("insufficient", "error: InsufficientResources: tiny-llama: coexist, deploy tiny-llama unquantized"),
        ("rolled_back", "error: HealthCheckFailed: the runtime reports error after"),
    ],
)
def test_a_failed_execution_is_one_line(name: str, expected: str) -> None:
    recorded = recording(name)
    line = error_line(recorded["error"], recorded["cause"])
    assert line.startswith(expected)
    assert "\n" not in line
    assert "stackTrace" not in line and "Traceback" not in line


def test_the_rollback_outcome_stays_in_the_line() -> None:
    recorded = recording("rolled_back")
    assert "rolled back: restored" in error_line(recorded["error"], recorded["cause"])


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        ('{"errorType": "SyncFailed", "errorMessage": "s5cmd: 403", "stackTrace": ["a", "b"]}', "s5cmd: 403"),
        (json.dumps(json.dumps({"errorMessage": "nested\n  twice"})), "nested twice"),
        ("plain words\nover lines", "plain words over lines"),
        ("", ""),
        (None, ""),
        ('{"unexpected": 1}', '{"unexpected": 1}'),
    ],
)
def test_causes_are_unwrapped(cause: str | None, expected: str) -> None:
    assert unwrap_cause(cause) == expected


def test_an_error_without_cause_is_named_alone() -> None:
    assert error_line("States.Timeout", None) == "error: States.Timeout"
    assert error_line(None, None) == "error: ExecutionFailed"


# ------------------------------------------------------------------------------- the plan


def test_the_plan_table_shows_every_decision() -> None:
    # Given the plan a dry run returned
    plan = recording("dry_run")["output"]
    # When it is rendered for a pipe
    text = plan_table(plan, PLAIN)
    # Then every decision of the plan is there, in plain text
    assert ANSI.search(text) is None
    assert text.startswith("Plan for tiny-llama (dry run: nothing was changed)")
    for label in (
        "model",
        "deploys",
        "files",
        "action",
        "port / unit",
        "quantization",
        "context",
        "endpoints",
    ):
        assert re.search(rf"^  {re.escape(label)}\s{{2,}}\S", text, re.M), label
    assert f"{plan['port']} / asoba-inference.service" in text
    assert "coexist: runs beside" in text
    assert plan["summary"] in text
    assert "FITS" in text
    for reason in plan["reasons"]:
        assert reason in text
    for warning in plan["warnings"]:
        assert f"! {warning}" in text


def test_the_resource_table_is_aligned() -> None:
    text = plan_table(recording("dry_run")["output"], PLAIN)
    rows = [line for line in text.splitlines() if re.match(r"^  (resource|GPU|RAM|disk)\s{2,}", line)]
    assert [row.split()[0] for row in rows] == ["resource", "GPU", "RAM", "disk"]
    # right-aligned numbers: every row ends its "need" column at the same place
    need_end = rows[0].index("need") + len("need")
    for row in rows[1:]:
        assert row[need_end - 1] != " " and row[need_end] == " ", row
    assert all(row.rstrip().endswith(("yes", "fits")) for row in rows)


def test_a_plan_that_does_not_fit_says_why() -> None:
    plan = dict(recording("dry_run")["output"])
    plan.update(fits=False, shortfalls=["GPU: needs 31.4 GiB, 18.5 GiB available"], summary="does not fit")
    plan["gpu"] = dict(plan["gpu"], need_bytes=plan["gpu"]["available_bytes"] + 1)
    text = plan_table(plan, PLAIN)
    assert "DOES NOT FIT" in text
    assert "x GPU: needs 31.4 GiB, 18.5 GiB available" in text
    assert re.search(r"^  GPU .* NO$", text, re.M)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = recording("dry_run")["output"]
    assert ANSI.search(plan_table(plan, Term(color=True)))
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert Term.for_stream(io.StringIO()) == PLAIN  # a pipe or a file
    assert Term.for_stream(Tty()).color is True
    assert Term.for_stream(Tty()).live is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert Term.for_stream(Tty()) == PLAIN
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert Term.for_stream(Tty()) == PLAIN


def test_the_plan_s_verdicts_are_the_planner_s() -> None:
    # Given a plan whose resources all fit but whose port is taken (the planner said: no)
    plan = Plan.model_validate(recording("dry_run")["output"])
    refused = plan.model_copy(
        update={"fits": False, "shortfalls": ["port 8001 is in use by flux-api.service"], "summary": "no"}
    )
    # When it is rendered
    text = plan_table(refused, PLAIN)
    # Then each resource row says what the planner's estimate says, and the verdict is the plan's
    rows = [line for line in text.splitlines() if re.match(r"^  (GPU|RAM|disk)\s{2,}", line)]
    assert [row.split()[-1] for row in rows] == ["yes", "yes", "yes"]
    assert (plan.gpu.fits, plan.ram.fits, plan.disk.fits) == (True, True, True)
    assert "DOES NOT FIT" in text
    assert "FITS" not in text.replace("DOES NOT FIT", "")


# ------------------------------------------------------------------------------- progress


def test_a_deploy_prints_each_step_as_it_starts_and_ends() -> None:
    lines = progress_lines("deploy")
    # the registry's steps under their names; the lock's and the ledger's states kebab-cased
    names = [
        "validate-input",
        "acquire-lock",
        "collect-resources",
        "plan",
        "snapshot-previous",
        "sync",
        "install",
        "start-service",
        "health-check",
        "record-deployment",
        "release-lock",
    ]
    started = [re.split(r"\s+", line.strip())[2] for line in lines if re.search(r"\bstart\s", line)]
    # sync and install start together (Prepare), in whichever order the branches began
    together = slice(names.index("sync"), names.index("install") + 1)
    assert sorted(started[together]) == sorted(names[together])
    assert (
        started[: together.start] + started[together.stop :]
        == names[: together.start] + names[together.stop :]
    )
    for name in names:
        assert len(lines_matching(lines, "done", name)) == 1, name
    assert lines_matching(lines, "end", "Deployed")
    # plumbing states are not steps
    assert not any(name in " ".join(lines) for name in ("Mode?", "DryRun?", "BeginChange", ".Wait", ".Poll"))


def test_progress_names_are_the_registry_s() -> None:
    lines = progress_lines("deploy")
    for step in steps.phase(steps.Phase.CHANGE):
        if step.run_if is None:  # stop-flux: this plan stopped nothing
            assert lines_matching(lines, "done", step.name), step.name
    assert lines_matching(lines, "done", steps.the(steps.Phase.PLAN).name)


def test_a_step_added_to_the_registry_shows_up_in_the_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a registry with one more instance step, and no CLI edit
    warm = steps.Step(
        "warm-cache",
        steps.Phase.CHANGE,
        "Read the weights once so the first request is fast",
        errors.CommandFailed,
        steps.InstanceStep(parameters=lambda config, state: {}, budget=lambda config, state: 60),
    )
    monkeypatch.setattr(steps, "STEPS", {**steps.STEPS, warm.name: warm})
    # And a history with its fragment's states; its result is at $.steps.warm_cache (the
    # command in flight at $.command is already the next step's)
    ref = {
        "step": warm.key,
        "document": warm.name,
        "command_id": "c-1",
        "instance_id": "i-0123456789abcdef0",
        "sent_at": 0.0,
        "first_sent_at": 0.0,
        "deadline": 60.0,
        "status": "Success",
        "result": {"ok": True, "files_read": 6, "bytes_read": 1469213},
    }
    after = {"steps": {warm.key: ref}, "command": dict(ref, step="next", result={"ok": True})}
    states = [
        ("TaskStateEntered", warm.label, None),
        ("TaskStateExited", warm.label, {"command": dict(ref, status="InProgress", result=None)}),
        ("WaitStateEntered", f"{warm.label}.Wait", None),
        ("WaitStateExited", f"{warm.label}.Wait", None),
        ("TaskStateEntered", f"{warm.label}.Poll", None),
        ("TaskStateExited", f"{warm.label}.Poll", {"command": ref}),
        ("ChoiceStateEntered", f"{warm.label}.Finished?", None),
        ("ChoiceStateExited", f"{warm.label}.Finished?", None),
        ("PassStateEntered", f"{warm.label}.Result", None),
        ("PassStateExited", f"{warm.label}.Result", after),
    ]
    events: list[dict[str, Any]] = [{"type": "ExecutionStarted", "timestamp": "2026-01-01T00:00:00+00:00"}]
    for second, (kind, name, output) in enumerate(states, start=1):
        details: dict[str, Any] = {"name": name}
        if output is not None:
            details["output"] = json.dumps(output)
        key = "stateEnteredEventDetails" if kind.endswith("Entered") else "stateExitedEventDetails"
        events.append({"type": kind, "timestamp": f"2026-01-01T00:00:{second:02d}+00:00", key: details})
    events.append({"type": "ExecutionSucceeded", "timestamp": "2026-01-01T00:00:12+00:00"})
    # When the CLI follows it
    out = io.StringIO()
    progress = Progress(out, PLAIN)
    for event in events:
        progress.feed(event)
    lines = out.getvalue().splitlines()
    # Then the step has its lines under its registry name, and its result's generic summary
    assert len(lines_matching(lines, "start", "warm-cache")) == 1
    done = lines_matching(lines, "done", "warm-cache")
    assert len(done) == 1
    assert "9.0 s" in done[0]
    assert "files_read=6, bytes_read=1469213" in done[0]
    assert not any(f"{warm.label}." in line for line in lines)


def test_the_sync_line_has_bytes_and_rate() -> None:
    events = recording("deploy")["events"]
    sync = next(
        json.loads(e["stateExitedEventDetails"]["output"])["steps"]["sync"]["result"]
        for e in events
        if (e.get("stateExitedEventDetails") or {}).get("name") == "Sync.Result"
    )
    line = lines_matching(progress_lines("deploy"), "done", "sync")[0]
    assert human_bytes(sync["bytes_transferred"]) in line
    assert re.search(r"\(\d+(\.\d)? [KMG]iB/s\)", line)
    assert f"{sync['files_transferred']} of {sync['files_total']} files" in line


def test_durations_come_from_the_history() -> None:
    line = lines_matching(progress_lines("deploy"), "done", "health-check")[0]
    seconds = float(re.search(r"(\d+\.\d) s", line).group(1))  # type: ignore[union-attr]
    assert seconds > 1.0  # the health check waits while the model loads
    assert "check(s)" in line
    assert "healthy" in line


def test_a_failed_step_shows_its_error() -> None:
    lines = progress_lines("rolled_back")
    failed = lines_matching(lines, "FAIL", "health-check")
    assert len(failed) == 1
    assert "HealthCheckFailed: the runtime reports error" in failed[0]
    rollback = lines_matching(lines, "done", "rollback")
    assert len(rollback) == 1 and "restored the previous state" in rollback[0]
    assert lines_matching(lines, "FAIL", "RolledBack")


def test_a_plan_that_does_not_fit_ends_at_its_fail_state() -> None:
    lines = progress_lines("insufficient")
    assert lines_matching(lines, "done", "plan")
    assert lines_matching(lines, "FAIL", "InsufficientResources")
    assert not lines_matching(lines, "start", "sync")


class FakeStepFunctions:
    """Replays a recorded history: `step` more events become visible at each describe."""

    def __init__(self, recorded: dict[str, Any], step: int = 25) -> None:
        self.events = recorded["events"]
        self.recorded = recorded
        self.visible = 0
        self.step = step
        self.history_calls: list[dict[str, Any]] = []

    def describe_execution(self, executionArn: str) -> dict[str, Any]:
        self.visible = min(len(self.events), self.visible + self.step)
        if self.visible < len(self.events):
            return {"status": "RUNNING"}
        described = {"status": self.recorded["status"]}
        if self.recorded["output"] is not None:
            described["output"] = json.dumps(self.recorded["output"])
        return described

    def get_execution_history(self, **request: Any) -> dict[str, Any]:
        self.history_calls.append(request)
        start = int(request.get("nextToken") or 0)
        end = min(start + request["maxResults"], self.visible)
        page: dict[str, Any] = {"events": self.events[start:end]}
        if end - start == request["maxResults"] and end < self.visible:
            page["nextToken"] = str(end)
        return page


def test_follow_reads_new_events_only_and_waits_politely() -> None:
    # Given a recorded deploy that shows a few more events at each poll
    fake = FakeStepFunctions(recording("deploy"))
    sleeps: list[float] = []
    out = io.StringIO()
    # When it is followed
    finished = follow(fake, "arn", Progress(out, PLAIN), poll_seconds=0.5, sleep=sleeps.append)
    # Then the execution's output is the ledger record
    assert finished.status == "SUCCEEDED"
    assert LedgerRecord.model_validate(finished.output).outcome == "succeeded"
    # And every step was printed once although the history was read many times
    lines = out.getvalue().splitlines()
    assert len(fake.history_calls) > 5
    assert len(lines_matching(lines, "start", "validate-input")) == 1
    assert len(lines_matching(lines, "done", "sync")) == 1
    # And the polls were spaced by the poll interval
    assert len(sleeps) == len(fake.history_calls) - 1
    assert set(sleeps) == {0.5}


def test_history_reader_resumes_from_the_last_full_page() -> None:
    fake = FakeStepFunctions(recording("deploy"), step=10**6)
    fake.describe_execution("arn")
    reader = HistoryReader(fake, "arn", page_size=50)
    first = reader.read()
    assert [e["id"] for e in first] == [e["id"] for e in fake.events]
    assert reader.read() == []
    assert fake.history_calls[-1]["nextToken"] == str(50 * (len(fake.events) // 50))


def test_follow_reports_the_failure_from_the_history() -> None:
    fake = FakeStepFunctions(recording("model_not_found"))
    finished = follow(fake, "arn", None, sleep=lambda _: None)
    assert finished.status == "FAILED"
    assert finished.error == "ModelNotFound"
    assert "no-such-model" in unwrap_cause(finished.cause)


def test_follow_gives_up_after_its_timeout() -> None:
    class Forever:
        def describe_execution(self, executionArn: str) -> dict[str, Any]:
            return {"status": "RUNNING"}

        def get_execution_history(self, **request: Any) -> dict[str, Any]:
            return {"events": []}

    ticks = iter(range(1000))
    with pytest.raises(TimeoutError, match="still RUNNING"):
        follow(Forever(), "arn:x:y", None, timeout=5, sleep=lambda _: None, clock=lambda: float(next(ticks)))


def test_a_long_step_says_it_still_runs() -> None:
    # Given a plain stream and a step whose command is still running
    ticks = [0.0]
    out = io.StringIO()
    progress = Progress(out, PLAIN, clock=lambda: ticks[0])
    poll = {
        "command": {
            "step": "sync",
            "document": "AsobaModelDeploy-sync",
            "command_id": "c-1",
            "instance_id": "i-0123456789abcdef0",
            "sent_at": 0.0,
            "first_sent_at": 0.0,
            "deadline": 3600.0,
            "ssm_status": "InProgress",
        }
    }
    events: list[dict[str, Any]] = [
        {"type": "ExecutionStarted", "timestamp": "2026-01-01T00:00:00+00:00"},
        {
            "type": "TaskStateEntered",
            "timestamp": "2026-01-01T00:00:01+00:00",
            "stateEnteredEventDetails": {"name": "Sync"},
        },
        {
            "type": "TaskStateExited",
            "timestamp": "2026-01-01T00:00:02+00:00",
            "stateExitedEventDetails": {"name": "Sync.Poll", "output": json.dumps(poll)},
        },
    ]
    for event in events:
        progress.feed(event)
    # When the heartbeat comes before and after HEARTBEAT_SECONDS
    progress.heartbeat()
    ticks[0] = 20.0
    progress.heartbeat()
    progress.heartbeat()
    # Then one line says so, timed on the history's clock, with SSM's status
    lines = [line for line in out.getvalue().splitlines() if re.search(r"\s\.\.\s+sync\s", line)]
    assert len(lines) == 1
    assert "21.0 s  still running (command InProgress)" in lines[0]


def test_live_progress_on_a_terminal_still_prints_every_step() -> None:
    out = io.StringIO()
    term = Term(color=True, live=True, width=120)
    finished = follow(
        FakeStepFunctions(recording("deploy")), "arn", Progress(out, term), sleep=lambda _: None
    )
    assert finished.status == "SUCCEEDED"
    text = ANSI.sub("", out.getvalue())
    for name in ("validate-input", "sync", "health-check", "release-lock"):
        assert re.search(rf"done\s+{name}\s", text), name
    assert ANSI.search(out.getvalue())


# ------------------------------------------------------------------------------- records


def test_the_deploy_summary_names_endpoints_sync_and_timings() -> None:
    record = LedgerRecord.model_validate(recording("deploy")["output"])
    text = record_summary(record, PLAIN)
    assert text.startswith(f"Deployed tiny-llama on {record.instance_id}")
    assert f"coexist, port {record.port}, quantization none" in text
    assert record.endpoints["status"] in text
    assert "sync" in text and "/s)" in text
    # step timings under the registry's names
    assert re.search(r"collect-resources \d+\.\d s, snapshot-previous", text)
    assert re.search(r"start-service \d+\.\d s, health-check \d+\.\d s", text)
    # the time to healthy, measured beside the plan's estimate
    assert re.search(r"to healthy\s+\d+\.\d s, estimate \d+\.\d s \([+-]\d+%", text)
    assert "$1.624/h" in text


def test_status_and_history_tables() -> None:
    record = LedgerRecord.model_validate(recording("deploy")["output"])
    failed = record.model_copy(
        update={"outcome": "failed", "error": "SyncFailed", "cause": '{"errorMessage": "s5cmd: 403"}'}
    )
    status = status_table(
        [
            InstanceStatus(record.instance_id, record, failed, None, None),
            InstanceStatus(
                "i-0fedcba9876543210", None, None, "arn:aws:states:r:a:execution:m:deploy-x", "qwen3"
            ),
        ]
    )
    header, first, second = status.splitlines()[:3]
    assert header.split() == [
        "instance",
        "model",
        "port",
        "unit",
        "action",
        "engine",
        "quant",
        "GPU",
        "RAM",
        "since",
        "(UTC)",
        "execution",
    ]
    assert "tiny-llama" in first and str(record.port) in first
    assert "nothing deployed" in second
    assert "deployment in progress: qwen3 by deploy-x" in status
    assert "failed: SyncFailed: s5cmd: 403" in status
    history = history_table([record, failed]).splitlines()
    assert len(history) == 3
    assert "succeeded" in history[1] and "failed" in history[2] and "SyncFailed: s5cmd: 403" in history[2]


def test_the_check_result_is_read_where_the_registry_puts_it() -> None:
    step = steps.the(steps.Phase.CHECK)
    result = {"passed": 5, "failed": 0, "checks": [{"name": "s3", "status": "pass"}]}
    events = [
        {"stateExitedEventDetails": {"name": f"{step.label}.Poll", "output": "{}"}},
        {
            "stateExitedEventDetails": {
                "name": f"{step.label}.Result",
                "output": json.dumps({"steps": {step.key: {"result": result}}}),
            }
        },
        {"stateExitedEventDetails": {"name": "ReportValidation", "output": "{}"}},
    ]
    assert commands.check_result(events) == result
    assert commands.check_result(events[:1]) is None


class FakeSsmAgent:
    """send_command and get_command_invocation as SSM answers them, one scripted answer a poll."""

    def __init__(self, answers: list[dict[str, Any] | Exception]) -> None:
        self.answers = answers
        self.sent: list[dict[str, Any]] = []

    def send_command(self, **request: Any) -> dict[str, Any]:
        self.sent.append(request)
        return {"Command": {"CommandId": "c-undeploy"}}

    def get_command_invocation(self, **_: Any) -> dict[str, Any]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeDynamoDb:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def get_item(self, **_: Any) -> dict[str, Any]:
        return {}  # no lock held

    def put_item(self, TableName: str, Item: dict[str, Any]) -> None:
        self.items.append(Item)


class FakeAws:
    region = "us-west-2"
    is_local = True

    def __init__(self, ssm: FakeSsmAgent) -> None:
        self.clients: dict[str, Any] = {"ssm": ssm, "dynamodb": FakeDynamoDb()}

    def client(self, service: str) -> Any:
        return self.clients[service]


def undeploy_with(
    answers: list[dict[str, Any] | Exception], *, json_output: bool = False
) -> tuple[int, str, str, FakeAws]:
    aws = FakeAws(FakeSsmAgent(answers))
    out, err = io.StringIO(), io.StringIO()
    ctx = commands.Context(
        aws=aws,  # type: ignore[arg-type]
        stack_name="AsobaModelDeploy",
        out=out,
        err=err,
        json_output=json_output,
        poll_seconds=0.25,
        sleep=lambda _: None,
        _stack=StackInfo.from_outputs("AsobaModelDeploy", OUTPUTS),
    )
    code = commands.undeploy(ctx, "i-0fedcba9876543210", restore_flux=True)
    return code, out.getvalue(), err.getvalue(), aws


def test_undeploy_sends_the_registry_s_document_and_follows_it_through_the_core() -> None:
    from botocore.exceptions import ClientError

    result = {"ok": True, "stopped": True, "removed": ["/opt/asoba-inference"], "flux_state": "active"}
    not_yet = ClientError({"Error": {"Code": "InvocationDoesNotExist", "Message": "not yet"}}, "Get")
    # Given SSM that does not know the invocation at first, then runs it
    code, out, err, aws = undeploy_with(
        [
            not_yet,
            {"Status": "Pending"},
            {"Status": "InProgress"},
            {"Status": "Success", "StandardOutputContent": "stopping\n" + json.dumps(result) + "\n"},
        ]
    )
    # Then the registry's document went out with its parameters
    assert code == 0, err
    sent = aws.clients["ssm"].sent[0]
    assert sent["DocumentName"] == "AsobaModelDeploy-undeploy"
    assert sent["InstanceIds"] == ["i-0fedcba9876543210"]
    assert sent["Parameters"]["StartFlux"] == ["true"]
    assert sent["Parameters"]["ServiceUnit"] == ["asoba-inference.service"]
    # And the result (the last JSON line, as the core reads it) is in the ledger and the summary
    (item,) = aws.clients["dynamodb"].items
    assert json.loads(item["record"]["S"])["results"]["undeploy"] == result
    assert "undeployed from i-0fedcba9876543210" in out
    assert "flux      flux-api.service active" in out
    assert err == ""


def test_a_failed_undeploy_is_one_error_line_and_exit_1() -> None:
    code, _, err, aws = undeploy_with(
        [{"Status": "Failed", "StandardOutputContent": '{"ok": false, "error": "unit is masked"}\n'}]
    )
    assert code == 1
    assert err.splitlines() == [
        "error: UndeployFailed: AsobaModelDeploy-undeploy failed on i-0fedcba9876543210: unit is masked"
    ]
    assert aws.clients["dynamodb"].items == []


def test_undeploy_json_carries_the_status_and_result() -> None:
    result = {"ok": True, "stopped": False, "removed": [], "flux_state": "active"}
    code, out, _, _ = undeploy_with(
        [{"Status": "Success", "StandardOutputContent": json.dumps(result)}], json_output=True
    )
    assert code == 0
    assert json.loads(out) == {"status": "Success", "result": result}


def test_checks_table() -> None:
    text = checks_table(
        {
            "checks": [
                {"name": "s3", "status": "pass", "ok": True, "detail": "listed"},
                {"name": "gpu", "status": "fail", "ok": False, "detail": "no driver"},
            ]
        }
    )
    assert re.search(r"^  s3\s+pass\s+listed$", text, re.M)
    assert re.search(r"^  gpu\s+fail\s+no driver$", text, re.M)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1536, "1.5 KiB"),
        (3 * 2**30, "3.0 GiB"),
        (-(2**20), "-1.0 MiB"),
        (None, "-"),
    ],
)
def test_human_bytes(value: int | None, text: str) -> None:
    assert human_bytes(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(0.25, "0.2 s"), (59.0, "59.0 s"), (125, "2 min 05 s"), (3720, "1 h 02 min")]
)
def test_human_seconds(value: float, text: str) -> None:
    assert human_seconds(value) == text


def test_table_pads_to_the_widest_cell() -> None:
    text = table(["a", "bb"], [["xxx", "1"], ["y", "22"]], align="<>")
    assert text.splitlines() == ["a    bb", "xxx   1", "y    22"]
