"""The cost arithmetic (core.cost): hours served from the ledger's timestamps, at the price
recorded for the instance type, with tokens from the benchmarks' counter readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from asoba_deploy.core import cost
from asoba_deploy.core.benchmark import BenchmarkResult
from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.ledger import LedgerRecord, TimeToHealthy

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
A, B = "i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def record(
    instance: str,
    outcome: str,
    started_h: float,
    *,
    model: str | None = "m",
    healthy_after_s: float | None = None,
    finished_h: float | None = None,
    instance_type: str = "g5.4xlarge",
    price: float | None = 1.624,
    benchmark: BenchmarkResult | None = None,
    dry_run: bool = False,
) -> LedgerRecord:
    return LedgerRecord(
        instance_id=instance,
        record_key=f"{at(started_h)}#x",
        execution=f"arn:aws:states:us-west-2:1:execution:m:{outcome}-{started_h}",
        model=model,
        deploy_model=model,
        dry_run=dry_run,
        outcome=outcome,  # type: ignore[arg-type]
        started_at=at(started_h),
        finished_at=at(finished_h if finished_h is not None else started_h),
        instance_type=instance_type,
        cost_per_hour_usd=price,
        time_to_healthy=TimeToHealthy(actual_s=healthy_after_s) if healthy_after_s is not None else None,
        benchmark=benchmark,
    )


def reading(measured_h: float, before: int, after: int) -> BenchmarkResult:
    return BenchmarkResult(
        ok=True, measured_at=at(measured_h), generation_tokens_before=before, generation_tokens_after=after
    )


def test_a_deployment_serves_from_healthy_until_the_next_one_and_costs_its_hours() -> None:
    # Given a deploy healthy 0.5 h after its start, replaced by another healthy at 10.5 h, still serving
    first = record(A, "succeeded", 0, model="a", healthy_after_s=1800, finished_h=0.6)
    second = record(A, "succeeded", 10, model="b", healthy_after_s=1800, finished_h=10.6)
    now = T0 + timedelta(hours=12.5)

    served = cost.served_by_deployment([second, first], now=now)

    assert [(s.model, s.hours, s.ongoing) for s in served] == [("a", 10.0, False), ("b", 2.0, True)]
    assert served[0].usd == pytest.approx(10 * 1.624)
    assert served[1].usd == pytest.approx(2 * 1.624)


def test_failures_dry_runs_and_benchmarks_do_not_end_it_an_undeploy_and_an_idle_stop_do() -> None:
    deploy = record(A, "succeeded", 0, healthy_after_s=360)  # healthy at 0.1 h
    others = [
        record(A, "failed", 1, model="x", finished_h=1.2),  # rolled back: the deploy serves on
        record(A, "planned", 2, model="y", dry_run=True),
        record(A, "benchmarked", 3),
        record(A, "undeployed", 4.1, model=None),
    ]
    served = cost.served_by_deployment([deploy, *others], now=T0 + timedelta(hours=9))
    assert [(s.hours, s.ongoing) for s in served] == [(pytest.approx(4.0), False)]

    stopped = record(B, "idle-stopped", 2.1, model=None)
    served = cost.served_by_deployment(
        [record(B, "succeeded", 0, healthy_after_s=360), stopped], now=T0 + timedelta(hours=9)
    )
    assert [s.hours for s in served] == [pytest.approx(2.0)]


def test_since_clips_the_hours_and_drops_what_ended_before() -> None:
    records = [
        record(A, "succeeded", 0, model="old", healthy_after_s=0),
        record(A, "succeeded", 5, model="new", healthy_after_s=0),
    ]
    now = T0 + timedelta(hours=8)

    served = cost.served_by_deployment(records, now=now, since=T0 + timedelta(hours=6))

    assert [(s.model, s.hours, s.clipped) for s in served] == [("new", pytest.approx(2.0), True)]
    assert cost.parse_since("7d", now=now) == now - timedelta(days=7)
    assert cost.parse_since("12h", now=now) == now - timedelta(hours=12)
    assert cost.parse_since("2026-11-30", now=now) == T0.replace(hour=0)
    with pytest.raises(ValueError, match="--since"):
        cost.parse_since("last week", now=now)


def test_prices_come_from_the_record_else_the_table_else_unknown() -> None:
    records = [
        record(A, "succeeded", 0, healthy_after_s=0, instance_type="g6.xlarge", price=None),
        record(B, "succeeded", 0, healthy_after_s=0, instance_type="g5.4xlarge", price=1.0),  # an override
        record("i-0cccccccccccccccc", "succeeded", 0, healthy_after_s=0, instance_type="x9.huge", price=None),
    ]
    served = cost.served_by_deployment(records, now=T0 + timedelta(hours=3))
    assert [s.usd for s in served] == [pytest.approx(3 * 0.805), pytest.approx(3.0), None]
    by_model = {t.key: t for t in cost.totals(served, "model")}
    assert by_model["m"].usd is None and by_model["m"].unknown_prices == ["x9.huge"]
    assert cost.hourly_price("g5.4xlarge", {"g5.4xlarge": 1.2}) == 1.2
    assert cost.hourly_price("p5.48xlarge") == cost.ON_DEMAND_USD_PER_HOUR["p5.48xlarge"]
    # the context key: validated instance types and non-negative prices
    DeployConfig(instance_ids=[A], model_bucket="bucket-a", instance_prices={"g5.4xlarge": 1.2})
    with pytest.raises(ValueError, match="instance_prices"):
        DeployConfig(instance_ids=[A], model_bucket="bucket-a", instance_prices={"g5.4xlarge": -1})
    with pytest.raises(ValueError, match="instance_prices"):
        DeployConfig(instance_ids=[A], model_bucket="bucket-a", instance_prices={"not a type": 1})


def test_tokens_are_the_last_reading_less_the_benchmarks_own_and_price_their_hours() -> None:
    # Given the deploy's benchmark (counter 0 -> 34) and a later `bench` at 4.1 h (counter 5034 ->
    # 5068): users had 5000 tokens by then
    deploy = record(A, "succeeded", 0, healthy_after_s=360, benchmark=reading(0.1, 0, 34))
    bench = record(A, "benchmarked", 4.1, benchmark=reading(4.1, 5034, 5068))

    served = cost.served_by_deployment([deploy, bench], now=T0 + timedelta(hours=10.1))

    (item,) = served
    assert item.tokens == 5000 and item.tokens_as_of == T0 + timedelta(hours=4.1)
    assert item.hours == pytest.approx(10.0) and item.hours_to_tokens == pytest.approx(4.0)
    assert item.usd_per_million_tokens == pytest.approx(4.0 * 1.624 / 5000 * 1e6)
    (total,) = cost.totals(served, "instance_id")
    assert total.usd_per_million_tokens == pytest.approx(item.usd_per_million_tokens)
    # a counter that went back (the runtime restarted) tells nothing
    restarted = record(A, "benchmarked", 5, benchmark=reading(5, 10, 44))
    assert (
        cost.served_by_deployment([deploy, bench, restarted], now=T0 + timedelta(hours=6))[0].tokens is None
    )


def test_the_json_report_sums_per_model_and_instance() -> None:
    records = [
        record(A, "succeeded", 0, model="a", healthy_after_s=0),
        record(B, "succeeded", 0, model="a", healthy_after_s=0, price=2.0),
        record(B, "succeeded", 1, model="b", healthy_after_s=0, price=2.0),
    ]
    now = T0 + timedelta(hours=2)
    body = cost.report(cost.served_by_deployment(records, now=now), since=None, now=now)
    assert body["by_model"]["a"]["hours"] == pytest.approx(3.0)
    assert body["by_model"]["a"]["usd"] == pytest.approx(2 * 1.624 + 1 * 2.0)
    assert body["by_instance"][B] == {
        "hours": pytest.approx(2.0),
        "usd": pytest.approx(4.0),
        "deployments": 2,
        "tokens": None,
        "usd_per_million_tokens": None,
        "unknown_prices": [],
    }
    assert [d["ongoing"] for d in body["deployments"]] == [True, False, True]


def test_a_rolled_back_deployment_ends_and_the_one_before_serves_again() -> None:
    # Given a deploy at 0 h, replaced at 2 h by a fleet rollout's deploy that was rolled back at 3 h
    before = record(A, "succeeded", 0, model="before", healthy_after_s=0)
    rolled = record(A, "succeeded", 2, model="rolled", healthy_after_s=0)
    undone = record(A, "rolled-back", 2, model="rolled", finished_h=3)
    undone = undone.model_copy(update={"execution": rolled.execution})

    served = cost.served_by_deployment([before, rolled, undone], now=T0 + timedelta(hours=5))

    assert [(s.model, s.hours, s.ongoing, s.clipped) for s in served] == [
        ("before", pytest.approx(2.0), False, False),
        ("rolled", pytest.approx(1.0), False, False),
        ("before", pytest.approx(2.0), True, True),
    ]
    by_model = {t.key: t for t in cost.totals(served, "model")}
    assert by_model["before"].hours == pytest.approx(4.0) and by_model["before"].deployments == 1
