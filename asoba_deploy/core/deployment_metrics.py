"""What the Record function publishes per deployment for the dashboard (stacks/dashboard.py):
its outcome, its duration and its time to healthy, from the ledger record it wrote."""

from __future__ import annotations

from datetime import datetime

from asoba_deploy.core import metric_names
from asoba_deploy.core.ledger import LedgerRecord


def _seconds_between(start: str, end: str) -> float | None:
    try:
        began = datetime.fromisoformat(start.replace("Z", "+00:00"))
        ended = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    if began.tzinfo is None or ended.tzinfo is None:
        return None
    return max(0.0, (ended - began).total_seconds())


def deployment_metrics(record: LedgerRecord) -> dict[str, float]:
    """Metric name -> value for a deployment's record (none for a dry run)."""
    if record.dry_run or record.outcome not in ("succeeded", "failed"):
        return {}
    succeeded = record.outcome == "succeeded"
    values = {
        metric_names.DEPLOYMENT_SUCCEEDED: 1.0 if succeeded else 0.0,
        metric_names.DEPLOYMENT_FAILED: 0.0 if succeeded else 1.0,
    }
    duration = _seconds_between(record.started_at, record.finished_at)
    if duration is not None:
        values[metric_names.DEPLOYMENT_SECONDS] = round(duration, 3)
    healthy = record.time_to_healthy.actual_s if record.time_to_healthy is not None else None
    if succeeded and healthy is not None:
        values[metric_names.TIME_TO_HEALTHY_SECONDS] = healthy
    return values
