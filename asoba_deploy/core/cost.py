"""What the deployments cost: the hours each served, from the ledger's own timestamps, at the
instance type's on-demand price (`deploy-model cost`).

A deployment serves from the moment it turned healthy (its record's start + time_to_healthy's
actual_s; else its record's end) until the next deployment on that instance turned healthy, an
undeploy, or now. An idle stop ends its serving time too (the instance is stopped, not billed
for compute); a fleet rollout's `rolled-back` record ends it and the deployment before it
serves again from then. The price is the context's `instance_prices` for the recorded instance type, else
this table. Tokens served come from the runtime's /metrics counter as each benchmark read it
(the deploy's, and `deploy-model bench`'s): the counter at the last reading, less the tokens the
earlier benchmarks of the same deployment generated themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asoba_deploy.core.ledger import LedgerRecord

# On-demand list prices, USD per hour, Linux, us-east-1 (overridable by context: instance_prices).
ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g4dn.8xlarge": 2.176,
    "g4dn.12xlarge": 3.912,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.8xlarge": 2.448,
    "g5.12xlarge": 5.672,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.805,
    "g6.2xlarge": 0.978,
    "g6.4xlarge": 1.323,
    "g6.12xlarge": 4.602,
    "g6e.xlarge": 1.861,
    "p3.2xlarge": 3.06,
    "p4d.24xlarge": 32.773,
    "p5.48xlarge": 98.32,
}
SECONDS_PER_HOUR = 3600.0
# Records that end what runs on the instance without a successor: an undeploy, an idle stop.
ENDS_SERVING = ("undeployed", "idle-stopped")


def hourly_price(instance_type: str, overrides: Mapping[str, float] | None = None) -> float | None:
    """USD per hour for the type: the override, else the table, else None (unknown)."""
    if overrides and instance_type in overrides:
        return float(overrides[instance_type])
    return ON_DEMAND_USD_PER_HOUR.get(instance_type)


def parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_since(text: str, *, now: datetime) -> datetime:
    """`7d`, `12h` (that long before now) or an ISO date/time (UTC unless it says otherwise)."""
    value = text.strip()
    units = {"d": "days", "h": "hours"}
    if len(value) > 1 and value[-1] in units and value[:-1].isdigit():
        return now - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        return parse_time(value)
    except ValueError:
        raise ValueError(
            f"--since: {text!r} is neither an ISO date (2026-11-30) nor a span (7d, 12h)"
        ) from None


def healthy_at(record: LedgerRecord) -> datetime:
    """When the deployment began to serve: its start + its measured time to healthy, else its end."""
    timing = record.time_to_healthy
    if timing is not None and timing.actual_s is not None:
        return parse_time(record.started_at) + timedelta(seconds=timing.actual_s)
    return parse_time(record.finished_at)


def _ended_at(record: LedgerRecord) -> datetime:
    return healthy_at(record) if record.outcome == "succeeded" else parse_time(record.finished_at)


@dataclass
class Served:
    """One deployment's serving time within the window, and what it cost."""

    instance_id: str
    model: str
    instance_type: str
    execution: str
    start: datetime  # within the window
    end: datetime
    ongoing: bool  # still in place (its end is now)
    usd_per_hour: float | None
    clipped: bool = False  # the window cut its start: the tokens cannot be told apart
    tokens: int | None = None  # generated for users, as of tokens_as_of
    tokens_as_of: datetime | None = None
    hours_to_tokens: float | None = None  # hours served up to tokens_as_of (in the window)

    @property
    def hours(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds() / SECONDS_PER_HOUR)

    @property
    def usd(self) -> float | None:
        return None if self.usd_per_hour is None else self.hours * self.usd_per_hour

    @property
    def usd_per_million_tokens(self) -> float | None:
        if not self.tokens or self.usd_per_hour is None or self.hours_to_tokens is None:
            return None
        return self.hours_to_tokens * self.usd_per_hour / self.tokens * 1e6


@dataclass
class Total:
    """A sum of serving times (one model's, one instance's): dollars where every price is known."""

    key: str
    hours: float = 0.0
    usd: float | None = 0.0
    tokens: int | None = None
    usd_for_tokens: float = 0.0  # the cost of the hours the counted tokens were served in
    executions: set[tuple[str, str]] = field(default_factory=set)  # (instance, execution)
    unknown_prices: list[str] = field(default_factory=list)

    @property
    def deployments(self) -> int:
        """Deployments summed (one resumed after a rollback counts once)."""
        return len(self.executions)

    def add(self, served: Served) -> None:
        self.executions.add((served.instance_id, served.execution))
        self.hours += served.hours
        if served.usd is None:
            self.usd = None
            if served.instance_type not in self.unknown_prices:
                self.unknown_prices.append(served.instance_type)
        elif self.usd is not None:
            self.usd += served.usd
        if served.tokens and served.hours_to_tokens is not None and served.usd_per_hour is not None:
            self.tokens = (self.tokens or 0) + served.tokens
            self.usd_for_tokens += served.hours_to_tokens * served.usd_per_hour

    @property
    def usd_per_million_tokens(self) -> float | None:
        return self.usd_for_tokens / self.tokens * 1e6 if self.tokens else None


def _tokens(deployment: LedgerRecord, readings: list[LedgerRecord]) -> tuple[int, datetime] | None:
    """Tokens generated for users by the deployment's runtime as of its last benchmark reading:
    that reading's counter at its start, less what the earlier benchmarks generated. None without
    a reading, or when the counter went back (the runtime restarted and began again from 0)."""
    benchmarks = [r.benchmark for r in [deployment, *readings] if r.benchmark is not None and r.benchmark.ok]
    benchmarks = [b for b in benchmarks if b.generation_tokens_before is not None and b.measured_at]
    if not benchmarks:
        return None
    last = benchmarks[-1]
    assert last.generation_tokens_before is not None and last.measured_at is not None
    own = sum(b.own_tokens for b in benchmarks[:-1])
    served = last.generation_tokens_before - own
    if served < 0 or any(
        (b.generation_tokens_before or 0) > (later.generation_tokens_before or 0)
        for b, later in pairwise(benchmarks)
    ):
        return None
    return served, parse_time(last.measured_at)


@dataclass
class _Segment:
    """One stretch of an instance serving one deployment (a rollback may resume an earlier one)."""

    record: LedgerRecord
    start: datetime
    end: datetime | None = None  # None: still serving
    resumed: bool = False  # it served before, was replaced, and is back (a fleet's rollback)
    readings: list[LedgerRecord] = field(default_factory=list)  # `deploy-model bench` records


def _segments(group: list[LedgerRecord]) -> list[_Segment]:
    """An instance's records, oldest first, walked into what served when. A success replaces what
    served (kept underneath: a `rolled-back` record of it brings the one before back); an undeploy
    or an idle stop ends it; failures, dry runs and benchmarks leave it serving."""
    segments: list[_Segment] = []
    current: _Segment | None = None
    underneath: list[LedgerRecord] = []
    for record in group:
        moment = _ended_at(record)
        if record.outcome == "succeeded":
            if current is not None:
                current.end = moment
                underneath.append(current.record)
            current = _Segment(record, moment)
            segments.append(current)
        elif record.outcome == "rolled-back":
            if current is not None and current.record.execution == record.execution:
                current.end = moment
                current = None
                if underneath:
                    current = _Segment(underneath.pop(), moment, resumed=True)
                    segments.append(current)
        elif record.outcome in ENDS_SERVING:
            if current is not None:
                current.end = moment
            current = None
            underneath.clear()
        elif record.outcome == "benchmarked" and current is not None:
            current.readings.append(record)
    return segments


def served_by_deployment(
    records: Iterable[LedgerRecord],
    *,
    now: datetime,
    since: datetime | None = None,
    overrides: Mapping[str, float] | None = None,
) -> list[Served]:
    """Each deployment's serving time within [since, now], oldest first (one item per stretch)."""
    by_instance: dict[str, list[LedgerRecord]] = {}
    for record in records:
        if record.dry_run:
            continue
        by_instance.setdefault(record.instance_id, []).append(record)
    served: list[Served] = []
    for instance_id, group in by_instance.items():
        group.sort(key=lambda r: (_ended_at(r), r.record_key))
        for segment in _segments(group):
            record, start = segment.record, segment.start
            end = min(segment.end, now) if segment.end is not None else now
            window_start = max(start, since) if since is not None else start
            if end <= window_start:
                continue
            item = Served(
                instance_id=instance_id,
                model=record.deploy_model or record.model or "?",
                instance_type=record.instance_type,
                execution=record.execution.rsplit(":", 1)[-1],
                start=window_start,
                end=end,
                ongoing=segment.end is None,
                # the price recorded at deploy time (the context's override applied), else the table
                usd_per_hour=record.cost_per_hour_usd
                if record.cost_per_hour_usd is not None
                else hourly_price(record.instance_type, overrides),
                # the window cut it, or it resumed: its tokens cannot be told apart
                clipped=window_start > start or segment.resumed,
            )
            counted = None if item.clipped else _tokens(record, segment.readings)
            if counted is not None:
                item.tokens, item.tokens_as_of = counted
                item.hours_to_tokens = max(0.0, (counted[1] - start).total_seconds() / SECONDS_PER_HOUR)
            served.append(item)
    served.sort(key=lambda s: s.start)
    return served


def totals(served: Iterable[Served], key: str) -> list[Total]:
    """Sums by `model` or `instance_id`, in order of first appearance."""
    out: dict[str, Total] = {}
    for item in served:
        name = str(getattr(item, key))
        out.setdefault(name, Total(key=name)).add(item)
    return list(out.values())


def report(served: list[Served], *, since: datetime | None, now: datetime) -> dict[str, Any]:
    """The `deploy-model cost --json` body."""

    def total_json(total: Total) -> dict[str, Any]:
        return {
            "hours": round(total.hours, 6),
            "usd": None if total.usd is None else round(total.usd, 6),
            "deployments": total.deployments,
            "tokens": total.tokens,
            "usd_per_million_tokens": _round(total.usd_per_million_tokens),
            "unknown_prices": total.unknown_prices,
        }

    return {
        "since": since.isoformat() if since else None,
        "until": now.isoformat(),
        "deployments": [
            {
                "instance_id": s.instance_id,
                "model": s.model,
                "execution": s.execution,
                "instance_type": s.instance_type,
                "usd_per_hour": s.usd_per_hour,
                "from": s.start.isoformat(),
                "to": s.end.isoformat(),
                "ongoing": s.ongoing,
                "hours": round(s.hours, 6),
                "usd": _round(s.usd),
                "tokens": s.tokens,
                "tokens_as_of": s.tokens_as_of.isoformat() if s.tokens_as_of else None,
                "usd_per_million_tokens": _round(s.usd_per_million_tokens),
            }
            for s in served
        ],
        "by_model": {t.key: total_json(t) for t in totals(served, "model")},
        "by_instance": {t.key: total_json(t) for t in totals(served, "instance_id")},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
