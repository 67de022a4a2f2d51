"""Follow an execution's history and print each step as it starts and ends.

A step is a Task state, or one instance step of the state machine's "run on instance"
fragment (``X``, ``X.Wait``, ``X.Poll``, ``X.Finished?``, ``X.Again``, ``X.Result``: one step
``X`` however many polls and re-sends it takes). Choice, Pass, Parallel and Wait states
around steps are plumbing and are not printed. A step ends when the next one starts, or
the execution ends: it succeeded when its last state exited, else it failed with the
error its Lambda raised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from asoba_deploy.cli.render import PLAIN, Style, human_bytes, human_seconds, sync_summary, unwrap_cause

TERMINAL_EVENTS = ("ExecutionSucceeded", "ExecutionFailed", "ExecutionTimedOut", "ExecutionAborted")
STEP_TYPES = ("TaskStateEntered",)
HEARTBEAT_SECONDS = 15.0
NAME_WIDTH = 24


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _json(text: Any) -> Any:
    if not isinstance(text, str) or not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _details(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The event's `...EventDetails` object (each event type names its own)."""
    for key, value in event.items():
        if key.endswith("EventDetails") and isinstance(value, Mapping):
            return value
    return {}


@dataclass
class Step:
    name: str
    entered_at: datetime
    runs: int = 1
    instance_step: bool = False
    exited_at: datetime | None = None
    output: Any = None
    last_poll: Any = None
    error: str | None = None
    cause: str | None = None
    last_heartbeat: float = 0.0


def _free_of(free: Any, total: Any) -> str:
    if isinstance(total, int | float) and isinstance(free, int | float):
        return f"{human_bytes(free)} free of {human_bytes(total)}"
    return "?"


def describe_result(
    step: str, key: str | None, result: Mapping[str, Any] | None, command: Mapping[str, Any]
) -> str:
    """One line about what an instance step's document reported."""
    if not isinstance(result, Mapping):
        return ""
    if key == "sync":
        return sync_summary(result)
    if key == "collect":
        ram = _free_of(result.get("ram_available_bytes"), result.get("ram_total_bytes"))
        gpus = [g for g in result.get("gpus") or [] if isinstance(g, Mapping)]
        gpu = "no GPU"
        if gpus:
            total = sum(int(g.get("memory_total_bytes") or 0) for g in gpus)
            used = sum(int(g.get("memory_used_bytes") or 0) for g in gpus)
            gpu = _free_of(total - used, total)
        active = [s.get("unit") for s in result.get("services") or [] if s.get("state") == "active"]
        return f"RAM {ram}; GPU {gpu}; running: {', '.join(map(str, active)) or 'nothing'}"
    if key == "previous":
        running = result.get("running") or []
        return f"recorded what runs now: {', '.join(map(str, running)) or 'nothing'}"
    if key == "stop":
        released = result.get("gpu_memory_released_bytes")
        text = f"{result.get('unit', '?')} {result.get('state', 'stopped')}"
        if released:
            text += f", {human_bytes(released)} GPU memory released"
        return text
    if key == "install":
        text = f"{result.get('unit', '?')} {result.get('state', '?')} on port {result.get('port', '?')}"
        extras = [
            label
            for flag, label in (("venv_created", "venv created"), ("pip_ran", "pip ran"))
            if result.get(flag)
        ]
        return text + (f" ({', '.join(extras)})" if extras else "")
    if key == "health":
        checks = int(command.get("attempt", 1) or 1)
        return f"{result.get('status', '?')} on port {result.get('port', '?')} after {checks} check(s)"
    if key == "validation":
        counts = [
            f"{result.get(k, 0)} {k}" for k in ("passed", "warnings", "failed", "skipped") if k in result
        ]
        return ", ".join(counts)
    if key == "rollback":
        return "restored the previous state" if result.get("ok") else str(result.get("error", ""))
    return ""


def describe_task(name: str, output: Any) -> str:
    """One line about what a Lambda task state produced."""
    if not isinstance(output, Mapping):
        return ""
    if name == "Validate":
        instance = output.get("instance") or {}
        text = f"instance {output.get('instance_id', '?')} {instance.get('state', '')}".rstrip()
        source = output.get("model_source")
        if isinstance(source, Mapping) and source.get("uri"):
            text += f"; model at {source['uri']}"
        return text
    if name == "Plan":
        plan = output.get("plan") or {}
        return str(plan.get("summary", ""))
    if name == "AcquireLock":
        taken = (output.get("lock") or {}).get("taken_over")
        return f"took over the stale lock of {str(taken).rsplit(':', 1)[-1]}" if taken else ""
    return ""


@dataclass
class Progress:
    """Consumes history events in order and writes a line per step start and end."""

    out: TextIO
    style: Style = PLAIN
    clock: Callable[[], float] = time.monotonic
    started_at: datetime | None = None
    current: Step | None = None
    steps: list[Step] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)

    # -------------------------------------------------------------- output

    def _elapsed(self, moment: datetime) -> str:
        if self.started_at is None:
            return "  --:--.-"
        seconds = max(0.0, (moment - self.started_at).total_seconds())
        return f"{int(seconds // 60):4d}:{seconds % 60:04.1f}"

    def _line(self, moment: datetime, verb: str, name: str, detail: str = "") -> None:
        text = f"{self._elapsed(moment)}  {verb}  {name}"
        if detail:
            text = f"{self._elapsed(moment)}  {verb}  {name.ljust(NAME_WIDTH)} {detail}"
        self.out.write(text.rstrip() + "\n")
        self.out.flush()

    # -------------------------------------------------------------- events

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("type", ""))
        moment = _timestamp(event.get("timestamp"))
        if kind == "ExecutionStarted":
            self.started_at = moment
            return
        if self.started_at is None:
            self.started_at = moment
        entered = event.get("stateEnteredEventDetails")
        exited = event.get("stateExitedEventDetails")
        if entered:
            self._entered(kind, str(entered.get("name", "")), moment)
        elif exited:
            self._exited(kind, str(exited.get("name", "")), exited.get("output"), moment)
        elif kind in ("LambdaFunctionFailed", "TaskFailed", "LambdaFunctionTimedOut", "TaskTimedOut"):
            details = _details(event)
            if self.current is not None:
                self.current.error = details.get("error") or kind
                self.current.cause = details.get("cause")
        elif kind in TERMINAL_EVENTS:
            details = _details(event)
            self._close(moment, details.get("error"), details.get("cause"))

    def _entered(self, kind: str, name: str, moment: datetime) -> None:
        group, _, sub = name.partition(".")
        current = self.current
        if current is not None and group == current.name:
            if sub:
                current.instance_step = True
                current.exited_at = None  # X exited, but X.Wait follows: the step goes on
            elif kind in STEP_TYPES:
                current.runs += 1  # sent again (the health check while the model loads)
            return
        self._close(moment)
        if kind in STEP_TYPES:
            self.current = Step(name=name, entered_at=moment, last_heartbeat=self.clock())
            self._line(moment, "start", name)
        elif kind == "SucceedStateEntered":
            self._line(moment, self.style.ok("end  "), name)
        elif kind == "FailStateEntered":
            self._line(moment, self.style.bad("FAIL "), name)

    def _exited(self, kind: str, name: str, output: Any, moment: datetime) -> None:
        current = self.current
        if current is None:
            return
        group, _, sub = name.partition(".")
        if group != current.name:
            return
        if not sub:
            current.exited_at, current.output = moment, output
            current.error = current.cause = None  # a retry succeeded
        elif sub == "Result":
            current.exited_at, current.output = moment, output
        elif sub == "Poll":
            current.last_poll = output

    def _close(self, moment: datetime, error: str | None = None, cause: str | None = None) -> None:
        step, self.current = self.current, None
        if step is None:
            return
        self.steps.append(step)
        if step.exited_at is not None:
            took = (step.exited_at - step.entered_at).total_seconds()
            detail = self._detail(step)
            self._line(
                step.exited_at, self.style.ok("done "), step.name, f"{human_seconds(took):>9}  {detail}"
            )
            return
        took = (moment - step.entered_at).total_seconds()
        name = step.error or error or "failed"
        message = unwrap_cause(step.cause if step.error else cause)
        self.failed_steps.append(step.name)
        self._line(
            moment,
            self.style.bad("FAIL "),
            step.name,
            f"{human_seconds(took):>9}  {name}: {message}".rstrip(": "),
        )

    def _detail(self, step: Step) -> str:
        state = _json(step.output)
        if not isinstance(state, Mapping):
            return ""
        if step.instance_step:
            command = state.get("command") or {}
            key = command.get("step") if isinstance(command, Mapping) else None
            result = ((state.get("steps") or {}).get(key) or {}).get("result") if key else None
            return describe_result(step.name, key, result, command if isinstance(command, Mapping) else {})
        return describe_task(step.name, state)

    def heartbeat(self, now_wall: datetime) -> None:
        """Every HEARTBEAT_SECONDS while a step runs: a line saying it still runs (and why)."""
        step = self.current
        if step is None or step.exited_at is not None:
            return
        tick = self.clock()
        if tick - step.last_heartbeat < HEARTBEAT_SECONDS:
            return
        step.last_heartbeat = tick
        poll = _json(step.last_poll) or {}
        command = poll.get("command") if isinstance(poll, Mapping) else None
        note = "still running"
        if isinstance(command, Mapping):
            result = command.get("result") or {}
            status = result.get("status") if isinstance(result, Mapping) else None
            note = f"still running (command {command.get('ssm_status', '?')}"
            note += f", runtime {status}" if status else ""
            note += f", run {command.get('attempt')}" if int(command.get("attempt") or 1) > 1 else ""
            note += ")"
        waited = (now_wall - step.entered_at).total_seconds()
        self._line(
            now_wall,
            self.style.dim("..   "),
            step.name,
            self.style.dim(f"{human_seconds(waited):>9}  {note}"),
        )


@dataclass
class Finished:
    arn: str
    status: str
    output: Any
    error: str | None
    cause: str | None
    seconds: float


def _failure_from(events: Iterable[Mapping[str, Any]]) -> tuple[str | None, str | None]:
    for event in events:
        for key in (
            "executionFailedEventDetails",
            "executionTimedOutEventDetails",
            "executionAbortedEventDetails",
        ):
            details = event.get(key)
            if details:
                return details.get("error"), details.get("cause")
    return None, None


class HistoryReader:
    """Reads only the events not seen yet; resumes from the last full page's token."""

    def __init__(self, sfn: Any, arn: str, page_size: int = 1000) -> None:
        self.sfn = sfn
        self.arn = arn
        self.page_size = page_size
        self.last_id = 0
        self._token: str | None = None
        self.events: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = []
        token = self._token
        while True:
            request: dict[str, Any] = {"executionArn": self.arn, "maxResults": self.page_size}
            if token:
                request["nextToken"] = token
            page = self.sfn.get_execution_history(**request)
            for event in page.get("events", []):
                if int(event.get("id", 0)) > self.last_id:
                    self.last_id = int(event["id"])
                    new.append(event)
            following = page.get("nextToken")
            if not following:
                break
            token = self._token = following
        self.events.extend(new)
        return new


def follow(
    sfn: Any,
    arn: str,
    progress: Progress | None,
    *,
    poll_seconds: float = 1.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Finished:
    """Poll until the execution ends, feeding every new history event to ``progress``."""
    started = clock()
    reader = HistoryReader(sfn, arn)
    while True:
        described = sfn.describe_execution(executionArn=arn)
        for event in reader.read():  # read after describe: a final status means a complete history
            if progress is not None:
                progress.feed(event)
        status = str(described["status"])
        if status != "RUNNING":
            break
        if timeout is not None and clock() - started > timeout:
            raise TimeoutError(f"execution {arn.rsplit(':', 1)[-1]} still RUNNING after {timeout:.0f} s")
        if progress is not None:
            progress.heartbeat(datetime.now(tz=progress.started_at.tzinfo if progress.started_at else None))
        sleep(poll_seconds)
    if progress is not None and progress.current is not None:
        progress._close(
            _timestamp(described.get("stopDate") or datetime.now(tz=progress.current.entered_at.tzinfo))
        )
    error, cause = described.get("error"), described.get("cause")
    if status != "SUCCEEDED" and not error:
        error, cause = _failure_from(reversed(reader.events))
    output = _json(described.get("output"))
    return Finished(
        arn=arn,
        status=status,
        output=output,
        error=error,
        cause=cause,
        seconds=clock() - started,
    )
