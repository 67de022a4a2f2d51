"""Text the CLI prints: sizes, durations, aligned tables, the plan, the ledger record, error lines.

Pure functions of their inputs (a plan, a ledger record, an execution's error and cause), so
they are tested with recorded outputs. Colour only through ``Style``, off when stdout is not a
terminal or NO_COLOR is set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from asoba_deploy.core.ledger import LedgerRecord

KIB = 1024


@dataclass(frozen=True)
class Style:
    """ANSI colour for a terminal; identity functions otherwise."""

    color: bool = False

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
        return cls(color=tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb")

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def ok(self, text: str) -> str:
        return self._wrap("32", text)

    def bad(self, text: str) -> str:
        return self._wrap("31", text)

    def warn(self, text: str) -> str:
        return self._wrap("33", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)


PLAIN = Style(color=False)
_ANSI = re.compile(r"\033\[[0-9;]*m")


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


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


# ------------------------------------------------------------------------------- tables


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    indent: int = 0,
    align: str = "",
    style: Style = PLAIN,
) -> str:
    """Columns padded to their widest cell; ``align`` gives '<' or '>' per column (default '<')."""
    body = [[str(cell) for cell in row] for row in rows]
    widths = [visible_len(h) for h in headers]
    for row in body:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], visible_len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = []
        for index, cell in enumerate(cells):
            pad = " " * (widths[index] - visible_len(cell))
            right = index < len(align) and align[index] == ">"
            parts.append(pad + cell if right else cell + pad)
        return (" " * indent + "  ".join(parts)).rstrip()

    lines = [line([style.bold(h) for h in headers])] if headers else []
    lines.extend(line(row) for row in body)
    return "\n".join(lines)


def fields(items: Sequence[tuple[str, str]], *, indent: int = 2) -> str:
    """'label   value' lines; a value's continuation lines are aligned under it."""
    width = max((len(label) for label, _ in items), default=0)
    out = []
    for label, value in items:
        first, *rest = str(value).split("\n") or [""]
        out.append(f"{' ' * indent}{label.ljust(width)}  {first}".rstrip())
        out.extend(f"{' ' * (indent + width + 2)}{more}" for more in rest)
    return "\n".join(out)


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


def _memory_row(name: str, estimate: Mapping[str, Any], style: Style) -> list[str]:
    need = int(estimate.get("need_bytes", 0))
    available = int(estimate.get("available_bytes", 0))
    fits = need <= available
    return [
        name,
        human_bytes(need),
        human_bytes(estimate.get("total_bytes")),
        human_bytes(estimate.get("free_before_bytes")),
        human_bytes(available),
        human_bytes(estimate.get("free_after_bytes")),
        style.ok("yes") if fits else style.bad("NO"),
    ]


def _disk_row(disk: Mapping[str, Any], style: Style) -> list[str]:
    needed = int(disk.get("needed_bytes", 0))
    reserve = int(disk.get("reserve_bytes", 0))
    free = int(disk.get("free_bytes", 0))
    fits = needed + reserve <= free
    return [
        "disk",
        human_bytes(needed),
        "-",
        human_bytes(free),
        human_bytes(free - reserve),
        human_bytes(disk.get("free_after_bytes")),
        style.ok("yes") if fits else style.bad("NO"),
    ]


def _breakdown(estimate: Mapping[str, Any]) -> str:
    parts = [f"{name} {human_bytes(value)}" for name, value in (estimate.get("breakdown") or {}).items()]
    return " + ".join(parts) or "-"


def _bullets(title: str, items: Sequence[str], style: Style, mark: str = "-") -> list[str]:
    if not items:
        return []
    return ["", f"  {style.bold(title)}", *(f"    {mark} {item}" for item in items)]


def plan_table(plan: Mapping[str, Any], style: Style = PLAIN, *, dry_run: bool = True) -> str:
    """The dry run: every decision of the plan (lambdas/core/planner.py) as aligned text."""
    model = str(plan.get("model", "?"))
    deploy_model = str(plan.get("deploy_model") or model)
    tier = plan.get("tier")
    catalog = f"catalog tier {tier}" if plan.get("in_catalog") else "not in the catalog: generic deploy"
    files = plan.get("files") or []
    cached = sum(int(f.get("bytes", 0)) for f in files if f.get("cached"))
    action = str(plan.get("action", "?"))
    stop = list(plan.get("stop_services") or [])
    if action == "replace":
        action_text = f"replace: stops {', '.join(stop)} and takes its port" if stop else "replace"
    else:
        action_text = "coexist: runs beside the running services, stops nothing"
    if plan.get("replaces_runtime"):
        action_text += "\n(replaces the inference service running now)"
    quantization = str(plan.get("quantization", "none"))
    if quantization != "none":
        quantization += " (stored quantized)" if plan.get("prequantized") else " (quantized on load)"
    quantization += f", {plan.get('dtype', '?')} compute"
    endpoints = plan.get("endpoints") or {}
    rows: list[tuple[str, str]] = [
        ("model", f"{model} ({catalog})"),
        ("deploys", f"{deploy_model} from {plan.get('source_uri', '?')}"),
    ]
    if plan.get("base_model"):
        rows.append(("base model", f"{plan['base_model']} from {plan.get('base_source_uri', '?')}"))
    rows += [
        (
            "files",
            f"{len(files)} files, {human_bytes(plan.get('total_bytes'))}; "
            f"{human_bytes(plan.get('bytes_to_transfer'))} to transfer, {human_bytes(cached)} cached",
        ),
        ("action", action_text),
        ("port / unit", f"{plan.get('port', '?')} / {plan.get('unit', '?')}"),
        ("quantization", quantization),
        ("context", f"{plan.get('context_tokens', '?')} tokens reserved for the KV cache"),
        ("parameters", human_count(plan.get("parameters"))),
        ("model path", str(plan.get("model_path", "?"))),
    ]
    if endpoints:
        rows.append(
            (
                "endpoints",
                "\n".join(
                    f"{endpoints[key]}  ({key})"
                    for key in ("status", "health", "generate", "openai_base")
                    if key in endpoints
                ),
            )
        )
    if plan.get("skipped_files"):
        rows.append(
            ("skipped", f"{len(plan['skipped_files'])} files, {human_bytes(plan.get('skipped_bytes'))}")
        )
    resources = []
    for name in ("gpu", "ram"):
        if isinstance(plan.get(name), Mapping):
            resources.append(_memory_row(name.upper(), plan[name], style))
    if isinstance(plan.get("disk"), Mapping):
        resources.append(_disk_row(plan["disk"], style))
    fits = bool(plan.get("fits"))
    verdict = style.ok("FITS") if fits else style.bad("DOES NOT FIT")
    header = f"Plan for {style.bold(model)}"
    if dry_run:
        header += " (dry run: nothing was changed)"
    lines = [header, "", fields(rows)]
    if resources:
        lines += [
            "",
            table(
                ["resource", "need", "total", "free now", "available", "free after", "fits"],
                resources,
                indent=2,
                align="<>>>>><",
                style=style,
            ),
            "",
        ]
        for name in ("gpu", "ram"):
            if isinstance(plan.get(name), Mapping):
                lines.append(f"  {name.upper()} need = {_breakdown(plan[name])}")
        lines.append("  available = total minus what other processes keep using after the stops")
    lines += _bullets("why", list(plan.get("reasons") or []), style)
    lines += _bullets("warnings", list(plan.get("warnings") or []), style, mark="!")
    lines += _bullets("shortfalls", list(plan.get("shortfalls") or []), style, mark="x")
    lines += ["", f"  {verdict}  {plan.get('summary', '')}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- records


def step_timings(record: LedgerRecord) -> str:
    parts = []
    for key, timing in record.steps.items():
        text = f"{key} {human_seconds(timing.seconds)}"
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


def record_summary(record: LedgerRecord, style: Style = PLAIN) -> str:
    """What a finished deployment did, from its ledger record (the execution's output)."""
    model = record.model or "?"
    if record.outcome == "failed":
        title = style.bad(f"Deployment of {model} failed on {record.instance_id}")
    elif record.outcome == "planned":
        title = f"Planned {model} on {record.instance_id}"
    else:
        title = style.ok(f"Deployed {model} on {record.instance_id}")
    what = ", ".join(
        part
        for part in (
            record.action,
            f"port {record.port}" if record.port else None,
            f"quantization {record.quantization}" if record.quantization else None,
        )
        if part
    )
    rows: list[tuple[str, str]] = []
    if record.deploy_model and record.deploy_model != record.model:
        rows.append(("deployed", f"{record.deploy_model} (a variant of {model})"))
    if what:
        rows.append(("how", what))
    if record.endpoints:
        rows.append(("endpoints", "\n".join(f"{value}  ({key})" for key, value in record.endpoints.items())))
    stopped = (record.plan or {}).get("stop_services") or []
    if stopped:
        rows.append(
            ("stopped", ", ".join(stopped) + "  (deploy-model undeploy --restore-flux brings it back)")
        )
    sync = sync_summary(record.results.get("sync"))
    if sync:
        rows.append(("sync", sync))
    rows.append(("steps", step_timings(record)))
    took = seconds_between(record.started_at, record.finished_at)
    rows.append(("took", f"{human_seconds(took)} (from {human_time(record.started_at)} UTC)"))
    if record.cost_per_hour_usd is not None:
        rows.append(("instance", f"{record.instance_type}, ${record.cost_per_hour_usd:.3f}/h on demand"))
    if record.error:
        rows.append(("error", error_line(record.error, record.cause).removeprefix("error: ")))
    rows.append(("execution", record.execution.rsplit(":", 1)[-1] or "-"))
    return "\n".join([title, fields(rows)])


def history_table(records: Sequence[LedgerRecord], style: Style = PLAIN) -> str:
    rows = []
    for record in records:
        outcome = record.outcome
        painted = (
            style.ok(outcome)
            if outcome == "succeeded"
            else style.bad(outcome)
            if outcome == "failed"
            else style.dim(outcome)
        )
        note = error_line(record.error, record.cause).removeprefix("error: ") if record.error else ""
        if len(note) > 80:
            note = note[:77] + "..."
        rows.append(
            [
                human_time(record.started_at),
                record.instance_id,
                record.model or "-",
                painted,
                record.action or "-",
                str(record.port or "-"),
                record.quantization or "-",
                human_seconds(seconds_between(record.started_at, record.finished_at)),
                record.execution.rsplit(":", 1)[-1] or "-",
                note,
            ]
        )
    return table(
        [
            "started (UTC)",
            "instance",
            "model",
            "outcome",
            "action",
            "port",
            "quant",
            "took",
            "execution",
            "error",
        ],
        rows,
        align="<<<<<><><<",
        style=style,
    )


@dataclass(frozen=True)
class InstanceStatus:
    instance_id: str
    deployed: LedgerRecord | None  # the newest successful (not dry-run) deployment
    latest: LedgerRecord | None  # the newest record of any kind
    lock_holder: str | None  # execution ARN of a deployment in progress
    lock_model: str | None


def status_table(statuses: Sequence[InstanceStatus], style: Style = PLAIN) -> str:
    rows = []
    notes = []
    for status in statuses:
        record = status.deployed
        if record is None:
            rows.append([status.instance_id, style.dim("nothing deployed"), "-", "-", "-", "-", "-"])
        else:
            rows.append(
                [
                    status.instance_id,
                    record.model or "-",
                    str(record.port or "-"),
                    record.action or "-",
                    record.quantization or "-",
                    human_time(record.finished_at),
                    record.execution.rsplit(":", 1)[-1],
                ]
            )
        if status.lock_holder:
            notes.append(
                f"{status.instance_id}: deployment in progress: {status.lock_model or '?'} "
                f"by {status.lock_holder.rsplit(':', 1)[-1]}"
            )
        latest = status.latest
        if latest is not None and latest is not record and latest.outcome == "failed":
            notes.append(
                f"{status.instance_id}: last deployment ({latest.model}, {human_time(latest.started_at)}) "
                f"failed: {error_line(latest.error, latest.cause).removeprefix('error: ')}"
            )
    text = table(
        ["instance", "model", "port", "action", "quant", "since (UTC)", "execution"],
        rows,
        align="<<><<<<",
        style=style,
    )
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text


def checks_table(result: Mapping[str, Any] | None, style: Style = PLAIN) -> str:
    """The validate document's checks: name, status, detail."""
    checks = (result or {}).get("checks") or []
    items = checks.items() if isinstance(checks, Mapping) else ((c.get("name", "?"), c) for c in checks)
    rows = []
    for name, check in items:
        if isinstance(check, Mapping):
            status = str(check.get("status") or ("pass" if check.get("ok") else "fail"))
            detail = str(check.get("detail") or check.get("error") or "")
        else:
            status, detail = ("pass" if check else "fail"), ""
        painted = (
            style.ok(status)
            if status == "pass"
            else style.warn(status)
            if status
            in (
                "warn",
                "warning",
                "skip",
                "skipped",
            )
            else style.bad(status)
        )
        rows.append([str(name), painted, detail])
    return (
        table(["check", "status", "detail"], rows, indent=2, style=style)
        if rows
        else "  (no checks reported)"
    )
