"""`deploy-model <model> --instances a,b,c | --tag k=v`: follow a fleet rollout, one row per instance.

Every state of an iteration of the Rollout Map has that iteration's state as its input, whose
`instance_id` says which instance it belongs to: the history alone tells each instance's step.
An iteration's end is its row (InstanceSucceeded / CountFailure / NotStarted output).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from asoba_deploy.cli.follow import Finished, HistoryReader
from asoba_deploy.cli.render import PLAIN, Term, table
from asoba_deploy.core.rollout import InstanceRow, RolloutSummary

ROW_STATES = ("InstanceSucceeded", "CountFailure", "NotStarted")  # an iteration's last state


def parse_tag(text: str) -> dict[str, str]:
    """`--tag key=value` -> the input's instance_tag."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--tag must be key=value, got {text!r}")
    return {"key": key, "value": value}


def parse_instances(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass
class InstanceProgress:
    instance_id: str
    state: str = "waiting"
    outcome: str | None = None
    detail: str = ""

    def line(self) -> str:
        if self.outcome:
            return f"{self.instance_id}  {self.outcome}" + (f"  {self.detail}" if self.detail else "")
        return f"{self.instance_id}  {self.state}"


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


class FleetProgress:
    """Each instance's current state, from the execution's history events."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.instances: dict[str, InstanceProgress] = {}

    def feed(self, event: Mapping[str, Any]) -> None:
        entered = event.get("stateEnteredEventDetails")
        exited = event.get("stateExitedEventDetails")
        if entered:
            state = _json(entered.get("input"))
            if isinstance(state, dict) and isinstance(state.get("instance_id"), str):
                self._update(state["instance_id"], state=str(entered["name"]))
        elif exited and exited.get("name") in ROW_STATES:
            row = _json(exited.get("output"))
            if isinstance(row, dict) and isinstance(row.get("instance_id"), str):
                self._update(
                    row["instance_id"], outcome=str(row.get("outcome")), detail=str(row.get("error") or "")
                )

    def _update(
        self, instance_id: str, *, state: str | None = None, outcome: str | None = None, detail: str = ""
    ) -> None:
        entry = self.instances.setdefault(instance_id, InstanceProgress(instance_id))
        before = entry.line()
        if outcome is not None:
            entry.outcome, entry.detail = outcome, detail
        elif state is not None and entry.outcome is None:
            entry.state = state
        if entry.line() != before:
            self.say(entry.line())


def follow_fleet(
    sfn: Any,
    arn: str,
    say: Callable[[str], None],
    *,
    poll_seconds: float = 1.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Finished:
    started = clock()
    reader = HistoryReader(sfn, arn)
    progress = FleetProgress(say)
    while True:
        described = sfn.describe_execution(executionArn=arn)
        for event in reader.read():  # after describe: a final status means a complete history
            progress.feed(event)
        status = str(described["status"])
        if status != "RUNNING":
            break
        if timeout is not None and clock() - started > timeout:
            raise TimeoutError(f"execution {arn.rsplit(':', 1)[-1]} still RUNNING after {timeout:.0f} s")
        sleep(poll_seconds)
    error, cause = described.get("error"), described.get("cause")
    return Finished(
        arn=arn,
        status=status,
        output=_json(described.get("output")),
        error=error,
        cause=cause,
        seconds=clock() - started,
        events=reader.events,
    )


def summary_of(finished: Finished) -> RolloutSummary | None:
    """The rollout's table: the output, or for a failed rollout SummarizeRollout's result."""
    if isinstance(finished.output, dict) and "rows" in finished.output:
        return RolloutSummary.model_validate(finished.output)
    for event in reversed(finished.events):
        details = event.get("stateExitedEventDetails")
        if details and details.get("name") == "SummarizeRollout":
            state = _json(details.get("output"))
            if isinstance(state, dict) and isinstance(state.get("summary"), dict):
                return RolloutSummary.model_validate(state["summary"])
    return None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def rollout_table(summary: RolloutSummary, term: Term = PLAIN) -> str:
    rows: Iterable[list[Any]] = (
        [
            row.instance_id,
            row.outcome,
            (row.plan.action or "-") if row.plan else "-",
            ("fits" if row.plan.fits else "does not fit") if row.plan and row.plan.fits is not None else "-",
            _seconds(row.seconds),
            row.error or "",
        ]
        for row in summary.rows
    )
    counts = ", ".join(f"{n} {what}" for what, n in summary.counts.items())
    head = (
        f"rollout {summary.outcome}: {counts} "
        f"({summary.tolerated_failures} failure(s) tolerated, {summary.max_concurrency} at a time)"
    )
    return head + "\n" + table(["instance", "outcome", "action", "plan", "elapsed", "error"], rows, term=term)


__all__ = ["InstanceRow", "follow_fleet", "parse_instances", "parse_tag", "rollout_table", "summary_of"]


def fleet_request(
    payload: dict[str, Any],
    *,
    instances: str | None,
    tag: str | None,
    max_concurrency: int | None,
    tolerated_failures: str | None,
    rollback_on_failure: bool = False,
) -> dict[str, Any]:
    """The single-instance request with the fleet's fields, checked against the contract."""
    from asoba_deploy.core.contracts import parse_request

    fleet = dict(payload)
    if instances is not None:
        fleet["instances"] = parse_instances(instances)
    if tag is not None:
        fleet["instance_tag"] = parse_tag(tag)
    if max_concurrency is not None:
        fleet["max_concurrency"] = max_concurrency
    if tolerated_failures is not None:
        fleet["tolerated_failures"] = (
            int(tolerated_failures) if tolerated_failures.isdigit() else tolerated_failures
        )
    if rollback_on_failure:
        fleet["rollback_on_failure"] = True
    parse_request(fleet)
    return fleet


def deploy_fleet(ctx: Any, payload: dict[str, Any], *, dry_run: bool, follow_it: bool) -> int:
    """Start the rollout, print one progress line per instance as it moves, then the table."""
    from asoba_deploy.cli import commands

    model = str(payload.get("model"))
    arn = commands.start(ctx, payload, commands.execution_name("dry" if dry_run else "rollout", model))
    if not follow_it:
        ctx.say(f"not following; see it with: aws stepfunctions describe-execution --execution-arn {arn}")
        if ctx.json_output:
            ctx.out.write(json.dumps({"executionArn": arn}) + "\n")
        return commands.EXIT_OK
    finished = follow_fleet(
        ctx.aws.client("stepfunctions"),
        arn,
        ctx.say,
        poll_seconds=ctx.poll_seconds,
        timeout=ctx.timeout,
        sleep=ctx.sleep,
    )
    summary = summary_of(finished)
    if ctx.json_output:
        ctx.out.write(
            json.dumps(summary.model_dump(mode="json") if summary else None, indent=2, sort_keys=True) + "\n"
        )
    elif summary is not None:
        ctx.say()
        ctx.say(rollout_table(summary, ctx.term))
    if finished.status != "SUCCEEDED":
        if summary is None:  # refused before any instance started (e.g. InvalidInput)
            return commands.report_failure(ctx, finished)
        ctx.err.write(f"error: {finished.error}: the rollout's failures passed its tolerance\n")
        return commands.EXIT_FAILED
    return commands.EXIT_OK
