"""The idle policy: stop an instance whose runtime served no request for `idle_stop_minutes`.

"No request for that long" is measured with the runtime's own /metrics counters, which the
scheduled check reads on the instance (ssm_documents/check-instance.yaml, `requests`): the
requests it finished (or failed) and those running or waiting now. The activity table keeps, per
instance, the count the previous check saw and when it last changed. A count that moved, a
request in flight or a restarted runtime (its count went down) resets the clock to now; an
unchanged count leaves it where it was. Counters plus the time they changed, rather than a
last-request timestamp from the runtime: the clock is the check's (one clock, no instance clock
skew), it survives the runtime's restarts, and any runtime that serves /metrics works.

Without counters (no runtime answering /metrics: nothing deployed, or Flux alone) the idle time
is unknown and the instance is never stopped: the policy only sees the runtime's requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from asoba_deploy.core import lock, metric_names
from asoba_deploy.core.errors import DeploymentInProgress
from asoba_deploy.core.ledger import LedgerRecord

IDLE_STOP_HOLDER_MODEL = "idle-stop"  # the lock item's model while the policy stops the instance


class RequestCounters(BaseModel):
    """The runtime's /metrics as check-instance reports them."""

    model_config = ConfigDict(extra="ignore")

    served: int = Field(ge=0)  # finished requests, any finish reason, plus failed ones
    in_flight: int = Field(default=0, ge=0)  # running + waiting now
    generated_tokens: int = Field(default=0, ge=0)


class Activity(BaseModel):
    """The activity table's item of one instance."""

    instance_id: str
    served: int | None = None  # None: the last check saw no counters
    changed_at: float  # epoch seconds: when the count last moved (or the clock started)
    observed_at: float  # epoch seconds: the last check that saw the instance running


class Observation(BaseModel):
    activity: Activity
    requests_served: int  # since the previous check


class IdleVerdict(BaseModel):
    idle_seconds: float | None  # None: unknown (no counters)
    stop: bool
    reason: str


def counters_from(result: dict[str, Any] | None) -> RequestCounters | None:
    """The check's `requests` (None when the runtime did not answer /metrics)."""
    requests = (result or {}).get("requests")
    if not isinstance(requests, dict):
        return None
    return RequestCounters.model_validate(requests)


def observe(
    previous: Activity | None, counters: RequestCounters | None, *, instance_id: str, now: float
) -> Observation:
    """The new activity item and the requests served since the previous check."""
    if counters is None:
        changed_at = previous.changed_at if previous is not None else now
        activity = Activity(instance_id=instance_id, served=None, changed_at=changed_at, observed_at=now)
        return Observation(activity=activity, requests_served=0)
    before = previous.served if previous is not None else None
    restarted = before is not None and counters.served < before
    served = counters.served if before is None or restarted else counters.served - before
    moved = before is None or counters.served != before or counters.in_flight > 0
    changed_at = now if moved or previous is None else previous.changed_at
    activity = Activity(
        instance_id=instance_id, served=counters.served, changed_at=changed_at, observed_at=now
    )
    return Observation(activity=activity, requests_served=served)


def decide(activity: Activity, idle_stop_minutes: float | None, *, now: float) -> IdleVerdict:
    if activity.served is None:
        return IdleVerdict(
            idle_seconds=None, stop=False, reason="the runtime does not answer /metrics: idle time unknown"
        )
    idle = max(0.0, now - activity.changed_at)
    if idle_stop_minutes is None:
        return IdleVerdict(idle_seconds=idle, stop=False, reason="the idle policy is off")
    limit = idle_stop_minutes * 60
    if idle < limit or idle == 0:
        return IdleVerdict(
            idle_seconds=idle, stop=False, reason=f"last request {idle:.0f} s ago, under {limit:.0f} s"
        )
    return IdleVerdict(
        idle_seconds=idle, stop=True, reason=f"no request for {idle:.0f} s (limit {limit:.0f} s)"
    )


def activity_metrics(
    seen: Observation, verdict: IdleVerdict, *, stopped: bool, hourly_price_usd: float | None
) -> dict[str, float]:
    """What the scheduled check publishes about activity (the dashboard's requests, idle time and,
    one datum per check while the instance runs, its hourly price)."""
    values = {
        metric_names.REQUESTS_SERVED: float(seen.requests_served),
        metric_names.IDLE_STOPS: 1.0 if stopped else 0.0,
    }
    if verdict.idle_seconds is not None:
        values[metric_names.IDLE_SECONDS] = round(verdict.idle_seconds, 3)
    if hourly_price_usd is not None:
        values[metric_names.INSTANCE_HOURLY_PRICE_USD] = hourly_price_usd
    return values


# --- the activity table --------------------------------------------------------------------
def read_activity(dynamodb: Any, table: str, instance_id: str) -> Activity | None:
    item = dynamodb.get_item(TableName=table, Key={"instance_id": {"S": instance_id}}, ConsistentRead=True)
    found = item.get("Item")
    if not found:
        return None
    served = found.get("served", {}).get("N")
    return Activity(
        instance_id=instance_id,
        served=int(served) if served is not None else None,
        changed_at=float(found["changed_at"]["N"]),
        observed_at=float(found["observed_at"]["N"]),
    )


def write_activity(dynamodb: Any, table: str, activity: Activity) -> None:
    item: dict[str, Any] = {
        "instance_id": {"S": activity.instance_id},
        "changed_at": {"N": f"{activity.changed_at:.3f}"},
        "observed_at": {"N": f"{activity.observed_at:.3f}"},
    }
    if activity.served is not None:
        item["served"] = {"N": str(activity.served)}
    dynamodb.put_item(TableName=table, Item=item)


# --- stopping ------------------------------------------------------------------------------
def execution_running(sfn: Any) -> Callable[[str], bool]:
    """Whether a lock holder (an execution ARN) still runs: the lock's takeover test."""

    def running(arn: str) -> bool:
        try:
            return bool(sfn.describe_execution(executionArn=arn)["status"] == "RUNNING")
        except ClientError:  # an unknown holder cannot be running
            return False

    return running


def stop_if_no_deployment(
    dynamodb: Any,
    ec2: Any,
    lock_table: str,
    *,
    instance_id: str,
    holder: str,
    holder_running: Callable[[str], bool],
) -> str | None:
    """Stop the instance while holding its deployment lock, so that no deployment starts on it
    meanwhile. Returns None when stopped, else why not (a deployment holds the lock)."""
    try:
        lock.acquire(
            dynamodb,
            lock_table,
            instance_id=instance_id,
            holder=holder,
            model=IDLE_STOP_HOLDER_MODEL,
            now=time.time(),
            holder_running=holder_running,
        )
    except DeploymentInProgress as error:
        return str(error)
    try:
        ec2.stop_instances(InstanceIds=[instance_id])
    finally:
        lock.release(dynamodb, lock_table, instance_id=instance_id, holder=holder)
    return None


def idle_stop_record(
    instance_id: str,
    *,
    execution: str,
    instance_type: str,
    cost_per_hour_usd: float | None,
    now: datetime,
    verdict: IdleVerdict,
) -> LedgerRecord:
    """The ledger's record of an idle stop (outcome "idle-stopped"; the deployment stays current:
    its unit comes back when the instance starts)."""
    stamp = now.isoformat()
    return LedgerRecord(
        instance_id=instance_id,
        record_key=f"{stamp}#idle-stop-{execution.rsplit(':', 1)[-1]}",
        execution=execution,
        model=None,
        dry_run=False,
        outcome="idle-stopped",
        started_at=stamp,
        finished_at=stamp,
        instance_type=instance_type,
        cost_per_hour_usd=cost_per_hour_usd,
        results={"idle": verdict.model_dump(mode="json")},
    )
