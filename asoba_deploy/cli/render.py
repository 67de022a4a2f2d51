"""Text the CLI prints: sizes, durations, tables, the plan, the ledger record, error lines.

Everything is drawn with `rich` through a `Term`: colour (and, in follow.py, live progress)
on a terminal; plain, greppable text when the stream is not a terminal, NO_COLOR is set or
TERM is dumb. The views are pure functions of what the core produced (the typed `Plan`, a
`LedgerRecord`, an execution's error and cause): they show its decisions, never redo them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from asoba_deploy.cli.benchmark_view import benchmark_lines
from asoba_deploy.core import steps as registry
from asoba_deploy.core.ledger import ESTIMATE_TOLERANCE, LedgerRecord, Resident, TimeToHealthy
from asoba_deploy.core.planner import DiskEstimate, MemoryEstimate, Plan
from asoba_deploy.core.residents import model_of_unit

KIB = 1024
PLAIN_WIDTH = 4000  # plain text is never wrapped: one record, one line

Cell = str | Text


@dataclass(frozen=True)
class Term:
    """How one stream is written. `color`: rich styles (ANSI); `live`: a live progress line."""

    color: bool = False
    live: bool = False
    width: int | None = None  # None: what rich finds (the terminal's width)

    @classmethod
    def for_stream(cls, stream: TextIO) -> Term:
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
        if not tty or os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
            return PLAIN
        return cls(color=True, live=True, width=shutil.get_terminal_size().columns)

    def console(self, file: TextIO) -> Console:
        if not self.color:
            return Console(
                file=file,
                color_system=None,
                force_terminal=False,
                force_interactive=False,
                no_color=True,
                width=PLAIN_WIDTH,
                markup=False,
                emoji=False,
                highlight=False,
            )
        return Console(
            file=file,
            force_terminal=True,
            width=self.width,
            markup=False,
            emoji=False,
            highlight=False,
        )

    def text(self, *renderables: RenderableType) -> str:
        """What `renderables` print as, one per line, without trailing blanks."""
        buffer = io.StringIO()
        self.console(buffer).print(*renderables, sep="\n")
        return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").split("\n"))


PLAIN = Term()


def styled(text: str, style: str) -> Text:
    return Text(text, style=style)


# ------------------------------------------------------------------------------- units


def human_bytes(value: float | None) -> str:
    """Binary units, as the planner's GiB: 0 B, 512 B, 1.4 MiB, 18.5 GiB."""
    if value is None:
        return "-"
    amount = float(value)
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount < KIB:
        return f"{sign}{amount:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= KIB
        if amount < KIB or unit == "TiB":
            return f"{sign}{amount:.1f} {unit}"
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float | None) -> str:
    return "-" if bytes_per_second is None else f"{human_bytes(bytes_per_second)}/s"


def human_seconds(seconds: float | None) -> str:
    """0.2 s, 23.4 s, 2 min 05 s, 1 h 02 min."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def human_count(value: int | None) -> str:
    """Parameter counts: 361.1 K, 134.5 M, 14.8 B."""
    if value is None:
        return "-"
    for limit, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if value >= limit:
            return f"{value / limit:.1f} {suffix}"
    return str(value)


def human_time(iso: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS' in UTC (as given when it does not parse)."""
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
    except (TypeError, ValueError):
        return None


def step_name(key: str) -> str:
    """A result key (`health_check`) as the step's name (`health-check`), from the registry."""
    try:
        return registry.by_key(key).name
    except KeyError:
        return key


# ------------------------------------------------------------------------------- tables


def _indented(renderable: RenderableType, indent: int) -> RenderableType:
    return Padding(renderable, (0, 0, 0, indent), expand=False) if indent else renderable


def grid(
    headers: Sequence[str], rows: Iterable[Sequence[Cell]], *, indent: int = 0, align: str = ""
) -> RenderableType:
    """A borderless table: columns two spaces apart; `align` gives '<' or '>' per column."""
    view = Table(
        box=None,
        show_header=bool(headers),
        header_style="bold",
        pad_edge=False,
        padding=(0, 1),
        show_edge=False,
    )
    for index, header in enumerate(headers):
        right = index < len(align) and align[index] == ">"
        view.add_column(header, justify="right" if right else "left", overflow="fold")
    for row in rows:
        view.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
    return _indented(view, indent)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    indent: int = 0,
    align: str = "",
    term: Term = PLAIN,
) -> str:
    return term.text(grid(headers, rows, indent=indent, align=align))


def fields(items: Sequence[tuple[str, Cell]], *, indent: int = 2) -> RenderableType:
    """'label   value' lines; a value's continuation lines are aligned under it."""
    view = Table.grid(padding=(0, 2))
    view.add_column(no_wrap=True)
    view.add_column(overflow="fold")
    for label, value in items:
        view.add_row(Text(label), value if isinstance(value, Text) else Text(str(value)))
    return _indented(view, indent)


def _bullets(title: str, items: Sequence[str], mark: str = "-") -> list[RenderableType]:
    if not items:
        return []
    return [Text(""), Text.assemble("  ", (title, "bold")), *(Text(f"    {mark} {item}") for item in items)]


# ------------------------------------------------------------------------------- errors


def unwrap_cause(cause: str | None) -> str:
    """The readable part of an execution's cause, on one line.

    A Lambda failure's cause is the JSON the runtime wrote ({"errorType", "errorMessage",
    "stackTrace"}); a rollback's cause may wrap another such JSON. The message is kept, the
    stack trace dropped, whitespace runs folded.
    """
    text = (cause or "").strip()
    for _ in range(4):
        try:
            parsed = json.loads(text)
        except (TypeError, ValueError):
            break
        if isinstance(parsed, dict):
            message = parsed.get("errorMessage") or parsed.get("Cause") or parsed.get("cause")
            if message is None:
                message = parsed.get("message") or parsed.get("error") or parsed.get("Error")
            if message is None:
                text = json.dumps(parsed, sort_keys=True)
                break
            text = str(message).strip()
        elif isinstance(parsed, str):
            text = parsed.strip()
        else:
            text = json.dumps(parsed)
            break
    return " ".join(text.split())


def error_line(error: str | None, cause: str | None) -> str:
    """`error: <Error>: <Cause>`, one line, whatever the cause looked like."""
    name = (error or "").strip() or "ExecutionFailed"
    message = unwrap_cause(cause)
    if message.startswith(f"{name}: "):
        message = message[len(name) + 2 :]
    return f"error: {name}: {message}" if message else f"error: {name}"


# ------------------------------------------------------------------------------- the plan


def _verdict(fits: bool) -> Text:
    return styled("yes", "green") if fits else styled("NO", "bold red")


def _memory_row(name: str, estimate: MemoryEstimate) -> list[Cell]:
    return [
        name,
        human_bytes(estimate.need_bytes),
        human_bytes(estimate.total_bytes),
        human_bytes(estimate.free_before_bytes),
        human_bytes(estimate.available_bytes),
        human_bytes(estimate.free_after_bytes),
        _verdict(estimate.fits),  # the planner's own check (core.planner.MemoryEstimate.fits)
    ]


def _disk_row(disk: DiskEstimate) -> list[Cell]:
    return [
        "disk",
        human_bytes(disk.needed_bytes),
        "-",
        human_bytes(disk.free_bytes),
        human_bytes(disk.free_bytes - disk.reserve_bytes),
        human_bytes(disk.free_after_bytes),
        _verdict(disk.fits),
    ]


def _breakdown(estimate: MemoryEstimate) -> str:
    return " + ".join(f"{name} {human_bytes(value)}" for name, value in estimate.breakdown.items()) or "-"


def _models_root(plan: Plan) -> str:
    """The chosen root and why (planner.roots): each candidate's device, free space, rate."""
    return f"{plan.models_root}\n{plan.models_root_reason}" if plan.models_root_reason else plan.models_root


def _time_to_healthy(plan: Plan) -> str:
    """The estimate and its parts (planner.timing), with the rates they came from."""
    estimate = plan.time_to_healthy
    if estimate is None:
        return "- (not estimated by this plan)"
    basis = estimate.basis
    if basis.get("load_from") == "stream":
        shape = "install, then load and warm-up, beside the sync"
    else:
        shape = "sync | install side by side, then load and warm-up"
    lines = [
        f"~{human_seconds(estimate.estimate_s)} ({shape})",
        f"transfer {human_seconds(estimate.transfer_s)}: {human_bytes(basis.get('transfer_bytes', 0))} at "
        f"{human_rate(basis.get('transfer_bytes_per_s'))} (link {human_rate(basis.get('link_bytes_per_s'))}, "
        f"disk writes {human_rate(basis.get('write_bytes_per_s'))} {basis.get('write_rate_from', '')})",
        f"install {human_seconds(estimate.install_s)}: {basis.get('install', '')}",
        f"load {human_seconds(estimate.load_s)}: {human_bytes(basis.get('load_bytes', 0))} from "
        f"{basis.get('load_from', 'disk')} at {human_rate(basis.get('load_bytes_per_s'))}",
        f"warm-up {human_seconds(estimate.warmup_s)}: the {basis.get('engine', plan.engine)} engine's start",
        f"steps {human_seconds(estimate.steps_s)}: {_path_steps(plan)} and the last health probe",
    ]
    if estimate.elapsed_s > 0:
        lines.append(f"before the plan {human_seconds(estimate.elapsed_s)} (measured)")
    return "\n".join(lines)


def _path_steps(plan: Plan) -> str:
    """The instance steps after the plan whose own overhead the estimate counts."""
    steps = ["snapshot-previous", *(["stop-flux"] if plan.stop_services else []), "start-service"]
    return ", ".join(steps)


def plan_view(plan: Plan, *, dry_run: bool = True) -> RenderableType:
    """Every decision of the plan (asoba_deploy.core.planner), as the planner made it."""
    catalog = f"catalog tier {plan.tier}" if plan.in_catalog else "not in the catalog: generic deploy"
    cached = plan.cached_bytes  # an execution's plan lists only its first files
    if plan.action == "replace":
        stops = ", ".join(plan.stop_services)
        action = f"replace: stops {stops} and takes its port" if stops else "replace"
    else:
        action = "coexist: runs beside the running services, stops nothing"
    if plan.replaces_runtime:
        action += "\n(replaces the inference service running now)"
    quantization: str = plan.quantization
    if quantization != "none":
        quantization += " (stored quantized)" if plan.prequantized else " (quantized on load)"
    quantization += f", {plan.dtype} compute"
    engine = plan.engine_reason or plan.engine
    serving = [
        f"max_model_len {plan.max_model_len or plan.context_tokens}",
        f"max_num_seqs {plan.max_num_seqs}",
    ]
    if plan.gpu_memory_utilization is not None:
        serving.insert(0, f"gpu_memory_utilization {plan.gpu_memory_utilization:g}")
    engine += "\n" + ", ".join(serving)
    endpoints = plan.endpoints.model_dump()
    rows: list[tuple[str, Cell]] = [
        ("model", f"{plan.model} ({catalog})"),
        ("deploys", f"{plan.deploy_model} from {plan.source_uri}"),
    ]
    if plan.base_model:
        rows.append(("base model", f"{plan.base_model} from {plan.base_source_uri or '?'}"))
    rows += [
        (
            "files",
            f"{plan.file_count} files, {human_bytes(plan.total_bytes)}; "
            f"{human_bytes(plan.bytes_to_transfer)} to transfer, {human_bytes(cached)} cached",
        ),
        ("action", action),
        (
            "port / unit",
            f"{plan.port} / {plan.unit}" + (" (beside the primary)" if model_of_unit(plan.unit) else ""),
        ),
        ("quantization", quantization),
        ("engine", engine),
        ("context", f"{plan.context_tokens} tokens reserved for the KV cache"),
        ("parameters", human_count(plan.parameters)),
        ("model path", plan.model_path),
        ("models root", _models_root(plan)),
        ("time to healthy", _time_to_healthy(plan)),
        (
            "endpoints",
            "\n".join(
                f"{endpoints[key]}  ({key})" for key in ("status", "health", "generate", "openai_base")
            ),
        ),
    ]
    if plan.skipped_count:
        rows.append(("skipped", f"{plan.skipped_count} files, {human_bytes(plan.skipped_bytes)}"))
    rows += _resident_rows(plan)
    header = Text.assemble("Plan for ", (plan.model, "bold"))
    if dry_run:
        header.append(" (dry run: nothing was changed)")
    resources = grid(
        ["resource", "need", "total", "free now", "available", "free after", "fits"],
        [_memory_row("GPU", plan.gpu), _memory_row("RAM", plan.ram), _disk_row(plan.disk)],
        indent=2,
        align="<>>>>><",
    )
    verdict = styled("FITS", "bold green") if plan.fits else styled("DOES NOT FIT", "bold red")
    parts: list[RenderableType] = [
        header,
        Text(""),
        fields(rows),
        Text(""),
        resources,
        Text(""),
        Text(f"  GPU need = {_breakdown(plan.gpu)}"),
        Text(f"  RAM need = {_breakdown(plan.ram)}"),
        Text("  available = total minus what other processes keep using after the stops"),
        *_bullets("why", plan.reasons),
        *_bullets("warnings", plan.warnings, mark="!"),
        *_bullets("shortfalls", plan.shortfalls, mark="x"),
        Text(""),
        Text.assemble("  ", verdict, f"  {plan.summary}"),
    ]
    return Group(*parts)


def _resident_rows(plan: Plan) -> list[tuple[str, Cell]]:
    """The other models on the instance (core.residents): those that keep serving, those the plan
    stops to make room (`evict: lru`) and those that would have to stop for the model to fit."""
    rows: list[tuple[str, Cell]] = []
    if plan.resident_models:
        rows.append(
            (
                "keeps serving",
                "\n".join(
                    f"{r.model or '?'} on port {r.port or '-'} ({r.unit}): "
                    f"GPU {human_bytes(r.gpu_memory_bytes)}, RAM {human_bytes(r.rss_bytes)} measured"
                    for r in plan.resident_models
                ),
            )
        )
    if plan.evict_units:
        rows.append(
            ("evicts", ", ".join(plan.evict_units) + "  (least recently used first; stopped before the sync)")
        )
    if plan.would_evict and plan.would_evict != plan.evict_units:
        hint = "" if plan.evict_units else "  (--keep-others --evict lru stops them; or undeploy them)"
        rows.append(("would evict", ", ".join(plan.would_evict) + hint))
    if plan.strategy != "none":
        rows.append(("switch", f"{plan.strategy}: {plan.strategy_reason}"))
    if plan.joins is not None:
        rows.append(
            (
                "joins",
                f"{plan.joins.unit} (serving {plan.joins.serving or '?'}): ADAPTERS {plan.joins.adapters}; "
                f"GPU {human_bytes(plan.joins.gpu_saved_bytes)} of the base not loaded again",
            )
        )
    return rows


def plan_table(plan: Plan | Mapping[str, Any], term: Term = PLAIN, *, dry_run: bool = True) -> str:
    """The dry run as text (a plan as JSON is read as the typed Plan first)."""
    typed = plan if isinstance(plan, Plan) else Plan.model_validate(plan)
    return term.text(plan_view(typed, dry_run=dry_run))


def plan_of(value: Any) -> Plan | None:
    """The typed plan of a state or record, None when there is none (or an older shape)."""
    if not isinstance(value, Mapping):
        return None
    try:
        return Plan.model_validate(value)
    except ValidationError:
        return None


# ------------------------------------------------------------------------------- records


def step_timings(record: LedgerRecord) -> str:
    parts = []
    for key, timing in record.steps.items():
        text = f"{step_name(key)} {human_seconds(timing.seconds)}"
        if timing.attempts > 1:
            text += f" ({timing.attempts} runs)"
        parts.append(text)
    return ", ".join(parts) or "-"


def sync_summary(result: Mapping[str, Any] | None) -> str:
    """'263.9 MiB in 1.9 s (139.0 MiB/s), 7 of 7 files' from the sync document's result."""
    if not isinstance(result, Mapping):
        return ""
    moved = result.get("bytes_transferred")
    seconds = result.get("seconds")
    rate = result.get("bytes_per_second")
    if rate is None and isinstance(moved, int | float) and isinstance(seconds, int | float) and seconds > 0:
        rate = moved / seconds
    text = f"{human_bytes(moved)} in {human_seconds(seconds)} ({human_rate(rate)})"
    if "files_transferred" in result and "files_total" in result:
        text += f", {result['files_transferred']} of {result['files_total']} files"
    if result.get("files_deleted"):
        text += f", {result['files_deleted']} stale removed"
    return text


def time_to_healthy_line(timing: TimeToHealthy | None) -> str:
    """'36.2 s, estimate 40.0 s (-9%, within +-30%); sync 18.5 s (est. 20.0 s), install 6.0 s
    (est. 8.0 s), load 13.2 s (est. 12.0 s)': the measured time beside the plan's."""
    if timing is None or (timing.actual_s is None and timing.estimate_s is None):
        return ""
    text = human_seconds(timing.actual_s) if timing.actual_s is not None else "not healthy"
    if timing.estimate_s is None:
        text += ", no estimate"
    else:
        text += f", estimate {human_seconds(timing.estimate_s)}"
        ratio = timing.ratio
        if ratio is not None:
            verdict = "within" if timing.within() else "outside"
            text += f" ({(ratio - 1) * 100:+.0f}%, {verdict} +-{ESTIMATE_TOLERANCE:.0%})"
    estimated = timing.estimated_parts
    load_estimate = None
    if "load_s" in estimated:
        load_estimate = estimated["load_s"] + estimated.get("warmup_s", 0.0)
    parts = []
    for name, measured, planned in (
        ("sync", timing.transfer_s, estimated.get("transfer_s")),
        ("install", timing.install_s, estimated.get("install_s")),
        ("load", timing.load_s, load_estimate),
    ):
        if measured is None:
            continue
        part = f"{name} {human_seconds(measured)}"
        if planned is not None:
            part += f" (est. {human_seconds(planned)})"
        parts.append(part)
    return text + ("; " + ", ".join(parts) if parts else "")


def record_view(record: LedgerRecord) -> RenderableType:
    """What a finished deployment did, from its ledger record (the execution's output)."""
    model = record.model or "?"
    if record.outcome == "failed":
        title = styled(f"Deployment of {model} failed on {record.instance_id}", "bold red")
    elif record.outcome == "planned":
        title = Text(f"Planned {model} on {record.instance_id}")
    else:
        title = styled(f"Deployed {model} on {record.instance_id}", "bold green")
    what = ", ".join(
        part
        for part in (
            record.action,
            f"port {record.port}" if record.port else None,
            f"quantization {record.quantization}" if record.quantization else None,
        )
        if part
    )
    rows: list[tuple[str, Cell]] = []
    if record.deploy_model and record.deploy_model != record.model:
        rows.append(("deployed", f"{record.deploy_model} (a variant of {model})"))
    if what:
        rows.append(("how", what))
    if record.endpoints:
        rows.append(("endpoints", "\n".join(f"{value}  ({key})" for key, value in record.endpoints.items())))
    plan = plan_of(record.plan)
    if plan is not None and plan.stop_services:
        rows.append(
            (
                "stopped",
                ", ".join(plan.stop_services) + "  (deploy-model undeploy --restore-flux brings it back)",
            )
        )
    if plan is not None and plan.evict_units:
        rows.append(("evicted", ", ".join(plan.evict_units) + "  (least recently used)"))
    if record.switch is not None:
        measured_downtime = (
            f"downtime {human_seconds(record.switch.downtime_s)}"
            if record.switch.downtime_s is not None
            else "downtime not measured"
        )
        rows.append(("switch", f"{record.switch.strategy}, {measured_downtime} ({record.switch.basis})"))
    sync = sync_summary(record.results.get(registry.STEPS["sync"].key))
    if sync:
        rows.append(("sync", sync))
    rows.append(("steps", step_timings(record)))
    healthy = time_to_healthy_line(record.time_to_healthy)
    if healthy:
        rows.append(("to healthy", healthy))
    measured = benchmark_lines(record.benchmark)
    if measured:
        rows.append(("benchmark", measured))
    took = seconds_between(record.started_at, record.finished_at)
    rows.append(("took", f"{human_seconds(took)} (from {human_time(record.started_at)} UTC)"))
    if record.cost_per_hour_usd is not None:
        rows.append(("instance", f"{record.instance_type}, ${record.cost_per_hour_usd:.3f}/h on demand"))
    if record.error:
        rows.append(("error", error_line(record.error, record.cause).removeprefix("error: ")))
    rows.append(("execution", record.execution.rsplit(":", 1)[-1] or "-"))
    return Group(title, fields(rows))


def record_summary(record: LedgerRecord, term: Term = PLAIN) -> str:
    return term.text(record_view(record))


OUTCOME_STYLES = {
    "succeeded": "green",
    "failed": "bold red",
    "planned": "dim",
    "undeployed": "dim",
    "benchmarked": "dim",
}


def history_table(records: Sequence[LedgerRecord], term: Term = PLAIN) -> str:
    rows: list[list[Cell]] = []
    for record in records:
        note = error_line(record.error, record.cause).removeprefix("error: ") if record.error else ""
        if len(note) > 80:
            note = note[:77] + "..."
        rows.append(
            [
                human_time(record.started_at),
                record.instance_id,
                record.model or "-",
                styled(record.outcome, OUTCOME_STYLES.get(record.outcome, "")),
                record.action or "-",
                str(record.port or "-"),
                record.quantization or "-",
                human_seconds(seconds_between(record.started_at, record.finished_at)),
                record.execution.rsplit(":", 1)[-1] or "-",
                note,
            ]
        )
    headers = ["started (UTC)", "instance", "model", "outcome", "action", "port", "quant", "took"]
    return table([*headers, "execution", "error"], rows, align="<<<<<><><<", term=term)


@dataclass(frozen=True)
class InstanceStatus:
    instance_id: str
    deployed: LedgerRecord | None  # the primary unit's deployment (ledger.current_deployment)
    latest: LedgerRecord | None  # the newest record of any kind
    lock_holder: str | None  # execution ARN of a deployment in progress
    lock_model: str | None
    # the instance's power: "running", "stopped", "running, no request for 12 min" (cli/power.py)
    power: str | None = None
    # every model served, the primary included, by port (ledger.resident_models)
    residents: tuple[Resident, ...] = ()


def _memory(value: int | None, resident: Resident) -> str:
    """Measured bytes as they are; the plan's estimate marked `~` (nothing measured it since)."""
    text = human_bytes(value)
    return f"~{text}" if value is not None and resident.memory_source == "planned" else text


def _resident_row(instance_id: str, resident: Resident, action: str | None) -> list[Cell]:
    return [
        instance_id,
        resident.model or "-",
        str(resident.port or "-"),
        resident.unit,
        action or "-",
        resident.engine or "-",
        resident.quantization or "-",
        _memory(resident.gpu_memory_bytes, resident),
        _memory(resident.rss_bytes, resident),
        human_time(resident.since),
        resident.execution.rsplit(":", 1)[-1],
    ]


def _deployed_row(instance_id: str, record: LedgerRecord) -> list[Cell]:
    """A deployment without its inventory (a status built from the record alone)."""
    plan = plan_of(record.plan)
    return [
        instance_id,
        record.model or "-",
        str(record.port or "-"),
        plan.unit if plan is not None else "-",
        record.action or "-",
        plan.engine if plan is not None else "-",
        record.quantization or "-",
        "-",
        "-",
        human_time(record.finished_at),
        record.execution.rsplit(":", 1)[-1],
    ]


def status_table(statuses: Sequence[InstanceStatus], term: Term = PLAIN) -> str:
    """One row per model served (the primary and each resident), one per instance serving none."""
    rows: list[list[Cell]] = []
    notes: list[RenderableType] = []
    estimated = False
    for status in statuses:
        record = status.deployed
        if status.residents:
            action = record.action if record is not None else None
            for resident in status.residents:
                rows.append(_resident_row(status.instance_id, resident, action if resident.primary else None))
                estimated = estimated or resident.memory_source == "planned"
        elif record is not None:
            rows.append(_deployed_row(status.instance_id, record))
        else:
            rows.append([status.instance_id, styled("nothing deployed", "dim"), *["-"] * 9])
        if status.power:
            notes.append(styled(f"{status.instance_id}: {status.power}", "dim"))
        if status.lock_holder:
            notes.append(
                styled(
                    f"{status.instance_id}: deployment in progress: {status.lock_model or '?'} "
                    f"by {status.lock_holder.rsplit(':', 1)[-1]}",
                    "yellow",
                )
            )
        latest = status.latest
        if latest is not None and latest is not record and latest.outcome == "failed":
            notes.append(
                styled(
                    f"{status.instance_id}: last deployment ({latest.model}, "
                    f"{human_time(latest.started_at)}) "
                    f"failed: {error_line(latest.error, latest.cause).removeprefix('error: ')}",
                    "red",
                )
            )
    if estimated:
        notes.append(styled("~: the plan's estimate (no collect-resources measured it since)", "dim"))
    headers = ["instance", "model", "port", "unit", "action", "engine", "quant", "GPU", "RAM", "since (UTC)"]
    view = grid([*headers, "execution"], rows, align="<<><<<<>><<")
    return term.text(view, *([Text(""), *notes] if notes else []))


CHECK_STYLES = {"pass": "green", "warn": "yellow", "warning": "yellow", "skip": "yellow", "skipped": "yellow"}


def checks_table(result: Mapping[str, Any] | None, term: Term = PLAIN) -> str:
    """The instance check document's checks: name, status, detail."""
    checks = (result or {}).get("checks") or []
    items = checks.items() if isinstance(checks, Mapping) else ((c.get("name", "?"), c) for c in checks)
    rows: list[list[Cell]] = []
    for name, check in items:
        if isinstance(check, Mapping):
            status = str(check.get("status") or ("pass" if check.get("ok") else "fail"))
            detail = str(check.get("detail") or check.get("error") or "")
        else:
            status, detail = ("pass" if check else "fail"), ""
        rows.append([str(name), styled(status, CHECK_STYLES.get(status, "bold red")), detail])
    if not rows:
        return "  (no checks reported)"
    return table(["check", "status", "detail"], rows, indent=2, term=term)
