"""The idle policy's clock (core/idle.py): counters that move, or a request in flight, reset it
to the check's own reading; unchanged counters let it run; no counters, no verdict."""

from __future__ import annotations

import pytest

from asoba_deploy.core.idle import Activity, RequestCounters, counters_from, decide, observe

ID = "i-0123456789abcdef0"


def _seen(previous: Activity | None, served: int | None, *, now: float, in_flight: int = 0) -> Activity:
    counters = None if served is None else RequestCounters(served=served, in_flight=in_flight)
    return observe(previous, counters, instance_id=ID, now=now).activity


def test_the_first_reading_starts_the_clock_and_unchanged_counters_let_it_run() -> None:
    first = _seen(None, 5, now=100.0)
    assert (first.changed_at, first.served) == (100.0, 5)
    later = _seen(first, 5, now=700.0)
    assert later.changed_at == 100.0
    verdict = decide(later, 10, now=700.0)
    assert (verdict.idle_seconds, verdict.stop) == (600.0, True)
    assert not decide(later, 11, now=700.0).stop  # 600 s is under 11 min


@pytest.mark.parametrize(
    ("served", "in_flight", "counted"),
    [(6, 0, 1), (5, 1, 0), (2, 0, 2)],  # a request finished; one running; the runtime restarted
    ids=["moved", "in-flight", "restarted"],
)
def test_activity_resets_the_clock_to_this_reading(served: int, in_flight: int, counted: int) -> None:
    previous = _seen(None, 5, now=100.0)
    seen = observe(previous, RequestCounters(served=served, in_flight=in_flight), instance_id=ID, now=700.0)
    assert seen.activity.changed_at == 700.0
    assert seen.requests_served == counted
    verdict = decide(seen.activity, 0.001, now=700.0)
    assert (verdict.idle_seconds, verdict.stop) == (0.0, False)  # busy: whatever the setting


def test_without_counters_or_without_the_policy_nothing_is_stopped() -> None:
    blind = _seen(_seen(None, 5, now=100.0), None, now=10_000.0)
    assert blind.served is None and blind.changed_at == 100.0
    assert decide(blind, 1, now=10_000.0).idle_seconds is None
    assert not decide(blind, 1, now=10_000.0).stop
    idle_for_long = _seen(_seen(None, 5, now=100.0), 5, now=10_000.0)
    off = decide(idle_for_long, None, now=10_000.0)
    assert (off.stop, off.reason) == (False, "the idle policy is off")


def test_the_checks_report_gives_the_counters() -> None:
    report = {"ok": True, "requests": {"served": 3, "in_flight": 1, "generated_tokens": 40}}
    assert counters_from(report) == RequestCounters(served=3, in_flight=1, generated_tokens=40)
    assert counters_from({"ok": True, "requests": None}) is None
    assert counters_from(None) is None


def test_the_context_key_is_off_by_default_takes_fractions_and_refuses_zero() -> None:
    from stacks.config import ConfigError, load_config

    base = {"instance_ids": ID, "model_bucket": "asoba-llm-cache"}
    assert load_config(base.get).idle_stop_minutes is None
    assert load_config({**base, "idle_stop_minutes": "0.5"}.get).idle_stop_minutes == 0.5  # -c key=0.5
    with pytest.raises(ConfigError, match="context key 'idle_stop_minutes'"):
        load_config({**base, "idle_stop_minutes": "0"}.get)
