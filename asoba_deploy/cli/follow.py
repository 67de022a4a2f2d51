"""Follow an execution's history and print each step as it starts and ends.

The steps are the registry's (asoba_deploy.core.steps.STEPS): a state whose name is a step's
label is that step, printed under the step's name (`StopFlux` -> `stop-flux`), and so are the
states of its instance-step fragment (`<Label>`, `<Label>.Wait`, `<Label>.Poll`,
`<Label>.Finished?`, `<Label>.Again`, `<Label>.Result`: one step however many polls and
re-sends it takes); its outcome is read at `$.steps.<key>`. Other Task states (the lock's
AcquireLock, the ledger's RecordDeployment, ...) are printed kebab-cased the same way. Choice,
Pass, Parallel and Wait states are plumbing and are not printed. A step ends when the next one
starts or the execution ends: it succeeded when its last state exited, else it failed with the
error its Lambda raised.

On a terminal the step that runs is a live line (spinner, elapsed time, what SSM says);
elsewhere a plain line every HEARTBEAT_SECONDS says it still runs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from asoba_deploy.cli.benchmark_view import benchmark_lines
from asoba_deploy.cli.render import (
    PLAIN,
    Term,
    human_bytes,
    human_rate,
    human_seconds,
    plan_of,
    sync_summary,
    unwrap_cause,
)
from asoba_deploy.core import steps as registry
from asoba_deploy.core.benchmark import from_result
from asoba_deploy.core.commands import CommandRef

TERMINAL_EVENTS = ("ExecutionSucceeded", "ExecutionFailed", "ExecutionTimedOut", "ExecutionAborted")
STEP_TYPES = ("TaskStateEntered",)
HEARTBEAT_SECONDS = 15.0
NAME_WIDTH = 26  # release-lock-after-failure


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


def kebab(label: str) -> str:
    """`ReleaseLockAfterFailure` -> `release-lock-after-failure` (a step's label -> its name)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", label).lower()


def _command(value: Any) -> CommandRef | None:
    if not isinstance(value, Mapping):
        return None
    try:
        return CommandRef.model_validate(value)
    except ValidationError:
        return None


# ------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Outcome:
    """What a finished step left in the state: the state itself and, for an instance step, its
    command (the document's result and how many times it ran)."""

    state: Mapping[str, Any]
    command: CommandRef | None = None

    @property
    def result(self) -> Mapping[str, Any]:
        result = self.command.result if self.command is not None else None
        return result if isinstance(result, Mapping) else {}


def _free_of(free: Any, total: Any) -> str:
    if isinstance(total, int | float) and isinstance(free, int | float):
        return f"{human_bytes(free)} free of {human_bytes(total)}"
    return "?"


def _validate_input(outcome: Outcome) -> str:
    state = outcome.state
    instance = state.get("instance") or {}
    text = f"instance {state.get('instance_id', '?')} {instance.get('state', '')}".rstrip()
    source = state.get("model_source")
    if isinstance(source, Mapping) and source.get("uri"):
        text += f"; model at {source['uri']}"
    return text


def _acquire_lock(outcome: Outcome) -> str:
    taken = (outcome.state.get("lock") or {}).get("taken_over")
    return f"took over the stale lock of {str(taken).rsplit(':', 1)[-1]}" if taken else ""


def _wake_instance(outcome: Outcome) -> str:
    wake = outcome.state.get("wake") or {}
    if not wake.get("started"):
        return "running"
    waited = float(wake.get("rounds", 1) - 1) * float(wake.get("wait_seconds", 0))
    return f"was stopped: started, running and SSM Online (~{waited:.0f} s of waits)"


def _plan(outcome: Outcome) -> str:
    plan = plan_of(outcome.state.get("plan"))
    return plan.summary if plan is not None else ""


def _collect_resources(outcome: Outcome) -> str:
    result = outcome.result
    ram = _free_of(result.get("ram_available_bytes"), result.get("ram_total_bytes"))
    gpus = [g for g in result.get("gpus") or [] if isinstance(g, Mapping)]
    gpu = "no GPU"
    if gpus:
        total = sum(int(g.get("memory_total_bytes") or 0) for g in gpus)
        used = sum(int(g.get("memory_used_bytes") or 0) for g in gpus)
        gpu = _free_of(total - used, total)
    active = [s.get("unit") for s in result.get("services") or [] if s.get("state") == "active"]
    return f"RAM {ram}; GPU {gpu}; running: {', '.join(map(str, active)) or 'nothing'}"


def _snapshot_previous(outcome: Outcome) -> str:
    running = outcome.result.get("running") or []
    return f"recorded what runs now: {', '.join(map(str, running)) or 'nothing'}"


def _stop_flux(outcome: Outcome) -> str:
    result = outcome.result
    released = result.get("gpu_memory_released_bytes")
    text = f"{result.get('unit', '?')} {result.get('state', 'stopped')}"
    if released:
        text += f", {human_bytes(released)} GPU memory released"
    return text


def _install(outcome: Outcome) -> str:
    result = outcome.result
    text = f"{result.get('unit', '?')} installed for port {result.get('port', '?')}"
    flags = (("venv_created", "venv created"), ("pip_ran", "pip ran"))
    extras = [label for flag, label in flags if result.get(flag)]
    return text + (f" ({', '.join(extras)})" if extras else "")


def _start_service(outcome: Outcome) -> str:
    result = outcome.result
    text = f"{result.get('unit', '?')} {result.get('state', '?')}"
    if result.get("main_pid"):
        text += f" (pid {result['main_pid']})"
    sync = result.get("sync")
    if sync == "complete":
        waited = result.get("wait_seconds")
        text += "; this execution's sync was complete"
        if result.get("waited") and isinstance(waited, int | float):
            text += f" after {human_seconds(waited)}"
    elif sync:
        text += f"; sync {sync}"
    return text


def _health_check(outcome: Outcome) -> str:
    result = outcome.result
    checks = outcome.command.attempt if outcome.command is not None else 1
    return f"{result.get('status', '?')} on port {result.get('port', '?')} after {checks} check(s)"


def _check_instance(outcome: Outcome) -> str:
    result = outcome.result
    counts = [f"{result.get(k, 0)} {k}" for k in ("passed", "warnings", "failed", "skipped") if k in result]
    return ", ".join(counts)


def _rollback(outcome: Outcome) -> str:
    result = outcome.result
    return "restored the previous state" if result.get("ok") else str(result.get("error", ""))


def benchmark_summary(result: Mapping[str, Any]) -> str:
    """The progress line's first line of the benchmark (the record shows all of it)."""
    return benchmark_lines(from_result(dict(result), measured_at="")).splitlines()[0]


def generic_summary(outcome: Outcome) -> str:
    """A step without a summary of its own: its error, else its result's first plain fields."""
    result = outcome.result
    if result.get("error"):
        return str(result["error"])
    scalars = [
        f"{key}={value}"
        for key, value in result.items()
        if key not in ("ok", "schema_version") and isinstance(value, str | int | float | bool)
    ]
    text = ", ".join(scalars[:4])
    return text if len(text) <= 100 else text[:97] + "..."


# Keyed by the progress line's name (a registry step's name); anything else: generic_summary.
SUMMARIES: dict[str, Callable[[Outcome], str]] = {
    "validate-input": _validate_input,
    "acquire-lock": _acquire_lock,
    "collect-resources": _collect_resources,
    "plan": _plan,
    "snapshot-previous": _snapshot_previous,
    "stop-flux": _stop_flux,
    "sync": lambda outcome: sync_summary(outcome.result),
    "install": _install,
    "start-service": _start_service,
    "health-check": _health_check,
    "check-instance": _check_instance,
    "rollback": _rollback,
    "benchmark": lambda outcome: benchmark_summary(outcome.result),
    "wake-instance": _wake_instance,
}


def summarize(name: str, outcome: Outcome) -> str:
    summary = SUMMARIES.get(name)
    if summary is not None:
        return summary(outcome)
    return generic_summary(outcome) if outcome.command is not None else ""


# ------------------------------------------------------------------------------- progress


@dataclass
class Step:
    """One step as the history shows it: `state` is its state label, `name` its progress name."""

    name: str
    state: str
    entered_at: datetime
    key: str | None = None  # where its outcome is in the state ($.steps.<key>), for registry steps
    runs: int = 1
    instance_step: bool = False
    exited_at: datetime | None = None
    output: Any = None
    last_poll: Any = None
    error: str | None = None
    cause: str | None = None
    last_heartbeat: float = 0.0
    finished: bool = False  # an instance step's `<Label>.Result` exited: it is done
    command: CommandRef | None = None  # the command in flight (for its progress lines)
    progress: Mapping[str, Any] | None = None  # the command's last {"progress": {...}} line


def progress_text(progress: Mapping[str, Any] | None) -> str:
    """'412.3 MiB of 1.2 GiB (33%), 98.2 MiB/s, ETA 8 s' from a command's progress line; a line
    without sizes (the runtime loading) says what it has: its status and time so far."""
    if not isinstance(progress, Mapping):
        return ""
    done, total = progress.get("bytes"), progress.get("total_bytes")
    parts: list[str] = []
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        parts.append(f"{human_bytes(done)} of {human_bytes(total)} ({min(100.0, 100.0 * done / total):.0f}%)")
    elif isinstance(done, int | float):
        parts.append(human_bytes(done))
    if progress.get("status"):
        parts.append(str(progress["status"]))
    rate = progress.get("rate")
    if isinstance(rate, int | float) and rate > 0:
        parts.append(human_rate(rate))
    eta = progress.get("eta_s")
    if isinstance(eta, int | float):
        parts.append(f"ETA {human_seconds(eta)}")
    elif isinstance(progress.get("elapsed_s"), int | float) and not parts:
        parts.append(f"{human_seconds(progress['elapsed_s'])} so far")
    return ", ".join(parts)


def progress_fraction(progress: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(completed, total) for a bar, when the progress line has sizes."""
    if not isinstance(progress, Mapping):
        return None
    done, total = progress.get("bytes"), progress.get("total_bytes")
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        return float(min(done, total)), float(total)
    return None


class _Running:
    """The live lines of the steps that run (several at once in a parallel group): spinner, name,
    time so far, what SSM says; a progress bar with bytes, rate and ETA under a step whose
    command streams progress lines (the sync; the runtime's load)."""

    BAR_WIDTH = 30

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.spinners: dict[str, Spinner] = {}

    def __rich__(self) -> RenderableType:
        rows: list[RenderableType] = []
        now = self.progress.history_now()
        for step in self.progress.running.values():
            if step.finished or (step.exited_at is not None and not step.instance_step):
                continue
            spinner = self.spinners.setdefault(step.state, Spinner("dots", style="cyan"))
            waited = (now - step.entered_at).total_seconds()
            spinner.update(
                text=Text.assemble(
                    (step.name.ljust(NAME_WIDTH), "bold"),
                    " ",
                    (f"{human_seconds(max(0.0, waited)):>9}  {self.progress.note(step)}", "dim"),
                )
            )
            rows.append(spinner)
            fraction = progress_fraction(step.progress)
            if fraction is not None:
                bar = Table.grid(padding=(0, 1))
                bar.add_row(
                    Text("  " + " " * NAME_WIDTH),
                    ProgressBar(total=fraction[1], completed=fraction[0], width=self.BAR_WIDTH),
                    Text(progress_text(step.progress), style="dim"),
                )
                rows.append(bar)
        return Group(*rows) if rows else Text("")


@dataclass
class Progress:
    """Consumes history events in order and writes a line per step start and end. Steps of a
    parallel group run at once: each is followed by its own state label, and ends when its
    fragment's `<Label>.Result` exits (a plain task: when the next step starts after it exited)."""

    out: TextIO
    term: Term = PLAIN
    clock: Callable[[], float] = time.monotonic
    started_at: datetime | None = None
    running: dict[str, Step] = field(default_factory=dict)  # by state label, in start order
    steps: list[Step] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)
    labels: dict[str, registry.Step] = field(init=False, repr=False)
    _console: Console | None = field(init=False, default=None, repr=False)
    _live: Live | None = field(init=False, default=None, repr=False)
    _last_event: tuple[datetime, float] | None = field(init=False, default=None, repr=False)
    _owners: dict[int, str] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # read when following starts: a step added to the registry shows up without a CLI edit
        self.labels = {step.label: step for step in registry.STEPS.values()}
        if self.term.color:
            self._console = self.term.console(self.out)

    @property
    def current(self) -> Step | None:
        """The step started last among those that run."""
        return next(reversed(self.running.values()), None)

    # -------------------------------------------------------------- output

    def start(self) -> None:
        """On a terminal: show the running steps as live lines until `stop`."""
        if self.term.live and self._console is not None and self._live is None:
            self._live = Live(
                _Running(self),
                console=self._console,
                refresh_per_second=8,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def _elapsed(self, moment: datetime) -> str:
        if self.started_at is None:
            return "  --:--.-"
        seconds = max(0.0, (moment - self.started_at).total_seconds())
        return f"{int(seconds // 60):4d}:{seconds % 60:04.1f}"

    def _line(self, moment: datetime, verb: str, style: str, name: str, detail: str = "") -> None:
        line = Text.assemble(self._elapsed(moment), "  ", (verb, style), "  ")
        if detail:
            line.append(f"{name.ljust(NAME_WIDTH)} ", style="bold" if style else "")
            line.append(detail, style="dim" if verb.startswith("..") else "")
        else:
            line.append(name, style="bold" if style else "")
        line.rstrip()
        if self._console is None:
            self.out.write(line.plain + "\n")
            self.out.flush()
        else:
            self._console.print(line, soft_wrap=True)

    # -------------------------------------------------------------- events

    def history_now(self) -> datetime:
        """Now on the history's clock: the last event's time plus what passed here since."""
        if self._last_event is None:
            return datetime.now(tz=self.started_at.tzinfo if self.started_at else None)
        moment, seen = self._last_event
        return moment + timedelta(seconds=max(0.0, self.clock() - seen))

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("type", ""))
        moment = _timestamp(event.get("timestamp"))
        self._last_event = (moment, self.clock())
        if kind == "ExecutionStarted":
            self.started_at = moment
            return
        if self.started_at is None:
            self.started_at = moment
        entered = event.get("stateEnteredEventDetails")
        exited = event.get("stateExitedEventDetails")
        owner = self._owner_of(event, entered)
        if entered:
            self._entered(kind, str(entered.get("name", "")), moment)
        elif exited:
            self._exited(str(exited.get("name", "")), exited.get("output"), moment)
        elif kind in ("LambdaFunctionFailed", "TaskFailed", "LambdaFunctionTimedOut", "TaskTimedOut"):
            details = _details(event)
            step = self._failing(str(details.get("error") or ""), owner)
            if step is not None:
                step.error = details.get("error") or kind
                step.cause = details.get("cause")
        elif kind in ("ParallelStateFailed", "ParallelStateAborted"):
            # a branch failed: the others were stopped; each running step ends here
            self._close_all(moment)
        elif kind in TERMINAL_EVENTS:
            details = _details(event)
            self._close_all(moment, details.get("error"), details.get("cause"))

    def _owner_of(self, event: Mapping[str, Any], entered: Any) -> str | None:
        """The state label an event belongs to, by its previousEventId chain (AWS links each
        event to the one that caused it), for a failure in one of several running branches."""
        event_id = event.get("id")
        if not isinstance(event_id, int):
            return None
        if entered:
            owner: str | None = str(entered.get("name", "")).partition(".")[0]
        else:
            previous = event.get("previousEventId")
            owner = self._owners.get(previous) if isinstance(previous, int) else None
        if owner is not None:
            self._owners[event_id] = owner
        return owner

    def _failing(self, error: str, owner: str | None) -> Step | None:
        """The running step an error belongs to: the one its typed error names
        (`SyncFailed` -> Sync), else the one its events descend from, else the last started."""
        for step in self.running.values():
            known = self.labels.get(step.state)
            if known is not None and error == known.error.__name__:
                return step
        if owner is not None and owner in self.running:
            return self.running[owner]
        return self.current

    def _step(self, state: str, moment: datetime) -> Step:
        known = self.labels.get(state)
        if known is None:
            return Step(name=kebab(state), state=state, entered_at=moment, last_heartbeat=self.clock())
        return Step(
            name=known.name,
            state=state,
            entered_at=moment,
            key=known.key,
            instance_step=known.instance is not None,
            last_heartbeat=self.clock(),
        )

    def _entered(self, kind: str, name: str, moment: datetime) -> None:
        group, _, sub = name.partition(".")
        step = self.running.get(group)
        if step is not None:
            # the step goes on in its fragment: an error before (a safety-net round's timeout)
            # was handled there
            step.error = step.cause = None
            if sub:
                step.instance_step = True
                step.exited_at = None  # X exited, but X.Wait follows: the step goes on
            elif kind in STEP_TYPES:
                step.runs += 1  # sent again (the health check while the model loads)
            return
        if kind in STEP_TYPES:
            # steps that ended (or failed) before this one started end now; a step of the same
            # parallel group still running goes on beside it
            self._close_ended(moment)
            self.running[name] = self._step(name, moment)
            self._line(moment, "start", "cyan", self.running[name].name)
        elif kind == "SucceedStateEntered":
            self._close_all(moment)
            self._line(moment, "end  ", "bold green", name)
        elif kind == "FailStateEntered":
            self._close_all(moment)
            self._line(moment, "FAIL ", "bold red", name)

    def _exited(self, name: str, output: Any, moment: datetime) -> None:
        group, _, sub = name.partition(".")
        step = self.running.get(group)
        if step is None:
            return
        state = _json(output)
        if isinstance(state, Mapping):
            command = _command(state.get("command"))
            if command is not None and (step.key is None or command.step == step.key):
                step.command = command
        if not sub:
            step.exited_at, step.output = moment, output
            step.error = step.cause = None  # a retry succeeded
        elif sub == "Result":
            step.exited_at, step.output = moment, output
            step.error = step.cause = None
            step.finished = True
            self._close(step, moment)
        elif sub in ("Poll", "Await"):
            step.last_poll = output

    def _ended(self, step: Step) -> bool:
        return (
            step.finished or step.error is not None or (step.exited_at is not None and not step.instance_step)
        )

    def _close_ended(self, moment: datetime) -> None:
        for step in [s for s in self.running.values() if self._ended(s)]:
            self._close(step, moment)

    def _close_all(self, moment: datetime, error: str | None = None, cause: str | None = None) -> None:
        # the failed first: the steps stopped beside them are their consequence
        for step in sorted(self.running.values(), key=lambda s: s.error is None):
            self._close(step, moment, error, cause)

    def _close(
        self, step: Step, moment: datetime, error: str | None = None, cause: str | None = None
    ) -> None:
        if self.running.pop(step.state, None) is None:
            return
        self.steps.append(step)
        if step.exited_at is not None and step.error is None:
            took = (step.exited_at - step.entered_at).total_seconds()
            detail = self._detail(step)
            self._line(step.exited_at, "done ", "green", step.name, f"{human_seconds(took):>9}  {detail}")
            return
        took = (moment - step.entered_at).total_seconds()
        if step.error is None and error is None:
            # a branch beside one that failed: Step Functions stopped it
            self._line(
                moment,
                "stop ",
                "yellow",
                step.name,
                f"{human_seconds(took):>9}  stopped: another step failed",
            )
            return
        name = step.error or error or "failed"
        message = unwrap_cause(step.cause if step.error else cause)
        self.failed_steps.append(step.name)
        self._line(
            moment,
            "FAIL ",
            "bold red",
            step.name,
            f"{human_seconds(took):>9}  {name}: {message}".rstrip(": "),
        )

    def _detail(self, step: Step) -> str:
        state = _json(step.output)
        if not isinstance(state, Mapping):
            return ""
        command = None
        if step.instance_step:
            entries = state.get("steps") or {}
            entry = entries.get(step.key) if step.key else None
            command = _command(entry) or _command(state.get("command"))
        return summarize(step.name, Outcome(state=state, command=command))

    def note(self, step: Step) -> str:
        """What is known about a running step: its progress (bytes, rate, ETA), its command's SSM
        status, the runtime's, the run."""
        shown = progress_text(step.progress)
        poll = _json(step.last_poll) or {}
        command = _command(poll.get("command")) if isinstance(poll, Mapping) else None
        if command is None:
            return shown or "still running"
        status = (command.result or {}).get("status")
        note = f"still running (command {command.ssm_status}"
        note += f", runtime {status}" if status else ""
        note += f", run {command.attempt}" if command.attempt > 1 else ""
        return note + ")" + (f": {shown}" if shown else "")

    def streaming(self) -> list[Step]:
        """The running instance steps whose command is known: their output streams can be read."""
        return [
            s for s in self.running.values() if s.instance_step and s.command is not None and not s.finished
        ]

    def heartbeat(self) -> None:
        """Every HEARTBEAT_SECONDS while steps run (not live): a line per step saying it still runs."""
        if self._live is not None:
            return
        tick = self.clock()
        for step in self.running.values():
            if step.finished or (step.exited_at is not None and not step.instance_step):
                continue
            if tick - step.last_heartbeat < HEARTBEAT_SECONDS:
                continue
            step.last_heartbeat = tick
            now = self.history_now()
            waited = (now - step.entered_at).total_seconds()
            self._line(now, "..   ", "dim", step.name, f"{human_seconds(waited):>9}  {self.note(step)}")


class CommandOutput:
    """Reads the progress lines the running steps' commands stream to the command-output log
    group (the SSM agent's CloudWatchOutputConfig: stream <command-id>/<instance-id>/<plugin>/
    stderr), from where it left off; a stream not there yet or a refused read is no progress."""

    def __init__(self, logs: Any, log_group: str) -> None:
        self.logs = logs
        self.log_group = log_group
        self._tokens: dict[str, str] = {}

    def stream_of(self, command: CommandRef) -> str:
        plugin = command.plugins[-1] if command.plugins else registry.by_key(command.step).plugin
        return f"{command.command_id}/{command.instance_id}/{plugin}/stderr"

    def latest(self, command: CommandRef) -> Mapping[str, Any] | None:
        """The last progress line written since the previous read, if any."""
        from botocore.exceptions import BotoCoreError, ClientError

        stream = self.stream_of(command)
        found: Mapping[str, Any] | None = None
        request: dict[str, Any] = {
            "logGroupName": self.log_group,
            "logStreamName": stream,
            "startFromHead": True,
        }
        for _ in range(10):  # pages of new events; the rest next time
            if stream in self._tokens:
                request["nextToken"] = self._tokens[stream]
            try:
                page = self.logs.get_log_events(**request)
            except (ClientError, BotoCoreError):
                return found
            for event in page.get("events", []):
                line = _json(event.get("message"))
                if isinstance(line, Mapping) and isinstance(line.get("progress"), Mapping):
                    found = line["progress"]
            token = page.get("nextForwardToken")
            if not token or token == self._tokens.get(stream):
                break
            self._tokens[stream] = token
        return found

    def update(self, progress: Progress) -> None:
        for step in progress.streaming():
            assert step.command is not None
            latest = self.latest(step.command)
            if latest is not None:
                step.progress = latest


# ------------------------------------------------------------------------------- following


@dataclass
class Finished:
    arn: str
    status: str
    output: Any
    error: str | None
    cause: str | None
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)  # the whole history


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
    output: CommandOutput | None = None,
) -> Finished:
    """Poll until the execution ends, feeding every new history event to ``progress``, and the
    running steps' progress lines from ``output`` (the command-output log group) when given."""
    started = clock()
    reader = HistoryReader(sfn, arn)
    if progress is not None:
        progress.start()
    try:
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
                if output is not None:
                    output.update(progress)
                progress.heartbeat()
            sleep(poll_seconds)
        if progress is not None and progress.running:
            progress._close_all(_timestamp(described.get("stopDate") or progress.history_now()))
    finally:
        if progress is not None:
            progress.stop()
    error, cause = described.get("error"), described.get("cause")
    if status != "SUCCEEDED" and not error:
        error, cause = _failure_from(reversed(reader.events))
    return Finished(
        arn=arn,
        status=status,
        output=_json(described.get("output")),
        error=error,
        cause=cause,
        seconds=clock() - started,
        events=reader.events,
    )
