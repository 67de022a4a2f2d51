"""The history of a whole deployment with every instance step at its full budget, polled at the
smallest interval the configuration allows, stays under Step Functions' 25,000 events."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from asoba_deploy.core.commands import CommandRef, next_wait
from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.settings import Settings, StackResources
from asoba_deploy.core.steps import Phase, instance_steps
from local.limits import HISTORY_EVENTS, worst_case_events

GB = 1024**3
MIN_INTERVAL = int(DeployConfig.model_fields["poll_interval_seconds"].metadata[0].ge)
# Every state of the machine outside the poll loops, entered once: an upper bound of the real
# definition's state count (tests/e2e/test_service_limits.py checks it).
FIXED_STATES = 100
DEPLOY_PHASES = (Phase.INSPECT, Phase.BACKUP, Phase.CHANGE, Phase.UNDO)


def settings(interval: int) -> Settings:
    return Settings(
        deploy=DeployConfig(
            instance_ids=["i-0123456789abcdef0"],
            model_bucket="asoba-llm-cache",
            poll_interval_seconds=interval,
        ),
        stack=StackResources(
            runtime_bundle_uri="https://s3.us-west-2.amazonaws.com/b/k.zip",
            s5cmd_uri="https://s3.us-west-2.amazonaws.com/b/s5cmd",
        ),
    )


def budgets(config: Settings, model_bytes: int) -> dict[str, int]:
    """Each deploy-path instance step's budget, from the registry (the health check's grows per GB)."""
    state: Any = SimpleNamespace(plan=SimpleNamespace(total_bytes=model_bytes))
    steps = [s for s in instance_steps() if s.phase in DEPLOY_PHASES and s.instance is not None]
    return {s.key: s.instance.budget(config, state) for s in steps if s.instance is not None}


def backoff(interval: int, budget: int) -> Callable[[float], int]:
    ref = CommandRef(
        step="sync",
        document="d",
        command_id="c",
        instance_id="i",
        sent_at=0,
        first_sent_at=0,
        deadline=budget,
    )
    return lambda elapsed: next_wait(ref, now=elapsed, interval=interval)


def worst_case(interval: int, model_bytes: int, *, fixed_wait: bool = False) -> int:
    config = settings(interval)
    total = 0
    resend = {s.key for s in instance_steps() if s.instance is not None and s.instance.resend_while}
    for key, budget in budgets(config, model_bytes).items():
        schedule = (lambda elapsed: interval) if fixed_wait else backoff(interval, budget)
        total += worst_case_events({key: budget}, schedule, resend=resend)
    return total + worst_case_events({}, lambda e: interval, fixed_states=FIXED_STATES)


def test_the_minimum_interval_is_one_second() -> None:
    assert MIN_INTERVAL == 1


def test_a_fixed_wait_at_the_minimum_interval_passed_the_limit() -> None:
    # The defect: one poll round per interval; a sync alone near its 3,600 s budget is ~32,400 events.
    config = settings(MIN_INTERVAL)
    sync = budgets(config, 30 * GB)["sync"]
    assert worst_case_events({"sync": sync}, lambda e: MIN_INTERVAL) > HISTORY_EVENTS
    assert worst_case(MIN_INTERVAL, 30 * GB, fixed_wait=True) > HISTORY_EVENTS


def test_the_backed_off_wait_keeps_the_worst_case_far_under_the_limit() -> None:
    for interval in (MIN_INTERVAL, 5, 60):
        for model_gb in (1, 30, 500):  # the health check's budget grows 20 s per GB
            events = worst_case(interval, model_gb * GB)
            assert events < HISTORY_EVENTS // 2, (interval, model_gb, events)
    print(
        "worst case at 1 s, 30 GB:",
        worst_case(MIN_INTERVAL, 30 * GB),
        "events (fixed wait:",
        worst_case(MIN_INTERVAL, 30 * GB, fixed_wait=True),
        ")",
    )


def test_the_wait_backs_off_but_never_far_past_the_deadline() -> None:
    schedule = backoff(1, 3600)
    assert [schedule(t) for t in (0, 5, 9.9)] == [1, 1, 1]  # quick steps are seen at once
    assert schedule(100) == 10 and schedule(3000) == 30  # a tenth of the time run, at most 30 s
    assert schedule(3590) == 10  # the deadline's poll is not overshot
