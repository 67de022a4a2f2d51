"""The history of a whole deployment with every instance step at its full budget and every SSM
status event lost (each step ended by its safety net), at the smallest safety-net interval the
configuration allows, stays under Step Functions' 25,000 events."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from asoba_deploy.core.commands import CommandRef, await_timeout, next_wait
from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.instance_step import WAIT_RUN_SECONDS
from asoba_deploy.core.settings import Settings, StackResources
from asoba_deploy.core.steps import Phase, instance_steps
from local.limits import HISTORY_EVENTS, worst_case_events

GB = 1024**3
MIN_INTERVAL = int(DeployConfig.model_fields["poll_interval_seconds"].metadata[0].ge)
MIN_SAFETY_NET = int(DeployConfig.model_fields["safety_net_seconds"].metadata[0].ge)
# Every state of the machine outside the poll loops, entered once: an upper bound of the real
# definition's state count (tests/e2e/test_service_limits.py checks it).
# (150: the Rollout Map's own states beside the per-instance deployment's; 170: the Evict and
# Switch steps of resident models and blue-green switches, 156 states in all)
FIXED_STATES = 170
# The states each instance of a fleet runs once more: the Rollout Map's per-instance deployment
# and the RollBackRollout Map's undo (115 and 16 now; tests/stack/test_rollout.py checks them).
PER_INSTANCE_STATES = 140
DEPLOY_PHASES = (Phase.INSPECT, Phase.BACKUP, Phase.CHANGE, Phase.UNDO)


def settings(interval: int, safety_net: int = 900) -> Settings:
    return Settings(
        deploy=DeployConfig(
            instance_ids=["i-0123456789abcdef0"],
            model_bucket="asoba-llm-cache",
            poll_interval_seconds=interval,
            safety_net_seconds=safety_net,
        ),
        stack=StackResources(
            runtime_bundle_uri="https://s3.us-west-2.amazonaws.com/b/k.zip",
            s5cmd_uri="https://s3.us-west-2.amazonaws.com/b/s5cmd",
        ),
    )


def budgets(config: Settings, model_bytes: int) -> dict[str, int]:
    """Each deploy-path instance step's budget, from the registry (the health check's grows per GB)."""
    # from disk: start-service waits beside the sync for its marker, its longest budget
    state: Any = SimpleNamespace(plan=SimpleNamespace(total_bytes=model_bytes, load_from="disk"))
    steps = [s for s in instance_steps() if s.phase in DEPLOY_PHASES and s.instance is not None]
    return {s.key: s.instance.budget(config, state) for s in steps if s.instance is not None}


def _ref(budget: int) -> CommandRef:
    return CommandRef(
        step="sync",
        document="d",
        command_id="c",
        instance_id="i",
        sent_at=0,
        first_sent_at=0,
        deadline=budget,
    )


def backoff(interval: int, budget: int) -> Callable[[float], int]:
    ref = _ref(budget)
    return lambda elapsed: next_wait(ref, now=elapsed, interval=interval)


def safety_net_rounds(safety_net: int, budget: int) -> Callable[[float], int]:
    """The Await's round, as the send computes it (fixed for the command)."""
    seconds = await_timeout(_ref(budget), now=0, safety_net=safety_net)
    return lambda elapsed: seconds


def worst_case(
    safety_net: int, model_bytes: int, *, fixed_rounds: int | None = None, fixed_states: int = FIXED_STATES
) -> int:
    config = settings(MIN_INTERVAL, safety_net)
    total = 0
    resend = {s.key for s in instance_steps() if s.instance is not None and s.instance.resend_while}
    for key, budget in budgets(config, model_bytes).items():
        schedule = (lambda elapsed: fixed_rounds) if fixed_rounds else safety_net_rounds(safety_net, budget)
        total += worst_case_events({key: budget}, schedule, resend=resend, resend_every=WAIT_RUN_SECONDS)
    return total + worst_case_events({}, lambda e: safety_net, fixed_states=fixed_states)


def test_the_minimum_interval_is_one_second() -> None:
    assert MIN_INTERVAL == 1


def test_a_round_per_second_would_pass_the_limit() -> None:
    # The defect the round cap prevents: one round per second; a sync alone near its 3,600 s
    # budget is ~28,800 events.
    config = settings(MIN_INTERVAL, MIN_SAFETY_NET)
    sync = budgets(config, 30 * GB)["sync"]
    assert worst_case_events({"sync": sync}, lambda e: MIN_SAFETY_NET) > HISTORY_EVENTS
    assert worst_case(MIN_SAFETY_NET, 30 * GB, fixed_rounds=MIN_SAFETY_NET) > HISTORY_EVENTS


def test_capped_safety_net_rounds_keep_the_worst_case_far_under_the_limit() -> None:
    for safety_net in (MIN_SAFETY_NET, 5, 900):
        for model_gb in (1, 30, 500):  # the health check's budget grows 20 s per GB
            events = worst_case(safety_net, model_gb * GB)
            assert events < HISTORY_EVENTS // 2, (safety_net, model_gb, events)
    print(
        "worst case at a 1 s safety net, 30 GB:",
        worst_case(MIN_SAFETY_NET, 30 * GB),
        "events (uncapped 1 s rounds:",
        worst_case(MIN_SAFETY_NET, 30 * GB, fixed_rounds=MIN_SAFETY_NET),
        ")",
    )


def test_the_wait_backs_off_but_never_far_past_the_deadline() -> None:
    schedule = backoff(1, 3600)
    assert [schedule(t) for t in (0, 5, 9.9)] == [1, 1, 1]  # quick steps are seen at once
    assert schedule(100) == 10 and schedule(3000) == 30  # a tenth of the time run, at most 30 s
    assert schedule(3590) == 10  # the deadline's poll is not overshot
