"""The instances' power from the CLI: `deploy-model start` and what `status` says of each
instance (running, stopped, or idle for how long, from the idle policy's activity table)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from asoba_deploy.cli.stack import CliError
from asoba_deploy.core import idle
from asoba_deploy.core.errors import InstanceUnavailable
from asoba_deploy.core.wake import WakeProgress, instance_state, wake

if TYPE_CHECKING:
    from asoba_deploy.cli.commands import Context

START_BUDGET_S = 600.0  # a GPU instance runs and is Online in SSM within a few minutes


@dataclass(frozen=True)
class Power:
    state: str | None  # the EC2 state name; None: unknown (not readable)
    idle_seconds: float | None  # since the last request the scheduled check saw (running only)


def power_of(ctx: Context, instance_id: str) -> Power:
    """The instance's EC2 state and, while it runs, how long no request arrived."""
    aws, stack = ctx.aws, ctx.stack
    try:
        state: str | None = instance_state(aws.client("ec2"), instance_id)
    except (InstanceUnavailable, ClientError):
        state = None
    idle_seconds = None
    if state == "running" and stack.activity_table:
        try:
            activity = idle.read_activity(aws.client("dynamodb"), stack.activity_table, instance_id)
        except ClientError:
            activity = None
        if activity is not None and activity.served is not None:
            idle_seconds = max(0.0, time.time() - activity.changed_at)
    return Power(state=state, idle_seconds=idle_seconds)


def describe(power: Power) -> str:
    if power.state is None:
        return "state unknown"
    if power.state == "running" and power.idle_seconds is not None:
        return f"running, no request for {_span(power.idle_seconds)}"
    return power.state


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def start(ctx: Context, instance_id: str | None) -> int:
    """Start a stopped instance and wait until it runs and its SSM agent is Online; the
    deployed runtime comes back by its unit's own restart."""
    aws, stack = ctx.aws, ctx.stack
    target = stack.choose_instance(instance_id) if instance_id else stack.instance_ids[0]
    budget = ctx.timeout or START_BUDGET_S
    ec2, ssm = aws.client("ec2"), aws.client("ssm")
    progress: WakeProgress | None = None
    try:
        while True:
            progress = wake(ec2, ssm, target, previous=progress, budget_s=budget, now=time.time())
            if progress.awake:
                break
            ctx.sleep(max(0.2, ctx.poll_seconds))
    except InstanceUnavailable as error:
        raise CliError(f"InstanceUnavailable: {error}") from None
    waited = time.time() - progress.since
    verb = "started" if progress.started else "was already running"
    if ctx.json_output:
        ctx.out.write(json.dumps(progress.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    ctx.say(f"{target} {verb}: running, SSM agent Online ({waited:.0f} s)")
    return 0
