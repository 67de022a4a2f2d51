"""Wake a stopped instance before a deployment: start it, then report, one call per Wait round of
the state machine (stacks/wake_instance.py), whether it runs and its SSM agent is Online.

The deployment's units were enabled by start-service, so systemd brings the resident models back
by itself once the instance boots; the deployment's own steps follow as on a running instance.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from asoba_deploy.core.errors import InstanceUnavailable
from asoba_deploy.core.validate_input import describe_instance

# EC2 states a deployment wakes the instance from (a stopping one is started once it has stopped)
ASLEEP = ("stopped", "stopping")
REFUSED = ("shutting-down", "terminated")


class WakeProgress(BaseModel):
    """$.wake: where the wake stands after each round."""

    awake: bool  # running and Online in SSM: the deployment's steps may start
    state: str  # the EC2 state name
    ping: str  # SSM PingStatus ("NotRegistered" when SSM does not list it yet)
    started: bool  # this execution called StartInstances
    started_at: float | None = None  # epoch seconds of that call
    since: float  # epoch seconds of the first round
    deadline: float  # epoch seconds: not awake by then -> InstanceUnavailable
    rounds: int
    wait_seconds: int  # the Wait before the next round (the configured poll interval)


def instance_state(ec2: Any, instance_id: str) -> str:
    return str(describe_instance(ec2, instance_id).get("State", {}).get("Name", "unknown"))


def ping_status(ssm: Any, instance_id: str, *, since: float | None = None) -> str:
    """The agent's PingStatus; with `since` (epoch seconds), "Online" only for a ping after it:
    just after a start SSM may still show the last ping from before the stop."""
    info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]).get(
        "InstanceInformationList", []
    )
    if not info:
        return "NotRegistered"
    status = str(info[0].get("PingStatus", "Unknown"))
    last = info[0].get("LastPingDateTime")
    if status == "Online" and since is not None and isinstance(last, datetime) and last.timestamp() < since:
        return "StalePing"
    return status


def wake(
    ec2: Any,
    ssm: Any,
    instance_id: str,
    *,
    previous: WakeProgress | None,
    budget_s: float,
    now: float,
    wait_s: int = 5,
) -> WakeProgress:
    """One round: start the instance when it is stopped; awake once running and Online."""
    state = instance_state(ec2, instance_id)
    if state in REFUSED or state not in (*ASLEEP, "pending", "running"):
        raise InstanceUnavailable(f"instance {instance_id} is {state}: it cannot be started")
    started = previous.started if previous is not None else False
    started_at = previous.started_at if previous is not None else None
    if state == "stopped":
        answer = ec2.start_instances(InstanceIds=[instance_id])
        started, started_at = True, now
        state = str(answer["StartingInstances"][0]["CurrentState"]["Name"])
    ping = ping_status(ssm, instance_id, since=started_at) if state == "running" else "ConnectionLost"
    since = previous.since if previous is not None else now
    progress = WakeProgress(
        awake=state == "running" and ping == "Online",
        state=state,
        ping=ping,
        started=started,
        started_at=started_at,
        since=since,
        deadline=previous.deadline if previous is not None else now + budget_s,
        rounds=(previous.rounds if previous is not None else 0) + 1,
        wait_seconds=max(1, wait_s),
    )
    if not progress.awake and now >= progress.deadline:
        raise InstanceUnavailable(
            f"instance {instance_id} is {state} (SSM agent {ping}) {now - since:.0f} s after "
            f"{'it was started' if started else 'the deployment began'}: not running and Online"
        )
    return progress
