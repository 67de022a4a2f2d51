"""Switching the stable endpoint (planner rule 7): how a model replacing the one that serves the
seed's port gets there. Blue-green when old and new fit together (the new one beside the old on a
spare port, then the router on the stable port switches), stop-start otherwise (the old one
first); behind the router a stop-start evicts the old unit and the router is pointed at the new.
"""

from __future__ import annotations

from typing import Any

from asoba_deploy.core.planner import Plan
from asoba_deploy.core.snapshot import InstanceSnapshot
from tests.unit.conftest import SeedBucket
from tests.unit.test_planner_golden import plan_from_bucket
from tests.unit.test_planner_residents import (
    AWQ_GPU,
    AWQ_RSS,
    PRIMARY,
    SMALL_GPU,
    SMALL_RSS,
    at,
    instance,
    primary,
    runtime,
)

ROUTER = "asoba-router.service"


def routed(backend: dict[str, Any], *, stable: int = 8001) -> InstanceSnapshot:
    """The router on the stable port in front of `backend` (a resident unit)."""
    router = {"unit": ROUTER, "state": "active", "main_pid": 777, "rss_bytes": 40 << 20}
    snapshot = instance(backend, router | {"gpu_memory_bytes": 0, "port": stable})
    forwards = {key: backend[key] for key in ("port", "model", "unit")} | {"generation": 4}
    state = {"unit": ROUTER, "state": "active", "port": stable, "backend": forwards}
    return InstanceSnapshot.model_validate(snapshot.model_dump() | {"router": state})


def deploy(seed_bucket: SeedBucket, model: str, snapshot: InstanceSnapshot, **request: Any) -> Plan:
    result, _ = plan_from_bucket(seed_bucket, model, snapshot, **request)
    return result


def test_auto_is_blue_green_when_old_and_new_fit_together(seed_bucket: SeedBucket) -> None:
    # Given the primary serving a small model on the seed's port, no router yet
    snapshot = instance(primary("mistral_policy_analysis", 8001, SMALL_GPU, SMALL_RSS, since=at(6, 5)))

    # When another small model is deployed (replace, strategy auto)
    result = deploy(seed_bucket, "mistral_iac_generation", snapshot)

    # Then it starts beside the old one in a unit of its own, and the router takes the port over
    assert result.fits, result.shortfalls
    assert (result.strategy, result.unit) == ("blue-green", "asoba-inference@mistral_iac_generation.service")
    assert result.port == 8002 and result.switch is not None
    assert (result.switch.stable_port, result.switch.old_unit, result.switch.old_port) == (
        8001,
        PRIMARY,
        8001,
    )
    assert result.endpoints.status.endswith(":8001/status")  # users call the stable port
    # both are counted: the old one keeps its memory until the switch
    assert [r.unit for r in result.resident_models] == [PRIMARY]
    assert "the router takes port 8001 over" in result.strategy_reason


def test_auto_is_stop_start_in_place_when_they_do_not_fit_together(seed_bucket: SeedBucket) -> None:
    # Given the primary serving qwen3-14b-awq: qwen3-14b (4-bit) does not fit beside it, Flux stopped or not
    snapshot = instance(primary("qwen3-14b-awq", 8001, AWQ_GPU, AWQ_RSS, since=at(6, 5)))

    # When qwen3-14b is deployed with strategy auto, then with blue-green asked
    auto = deploy(seed_bucket, "qwen3-14b", snapshot)
    asked = deploy(seed_bucket, "qwen3-14b", snapshot, strategy="blue-green")

    # Then auto replaces the primary in place (the old one stops first) and fits
    assert auto.fits, auto.shortfalls
    assert (auto.strategy, auto.unit, auto.switch) == ("stop-start", PRIMARY, None)
    assert "old and new do not fit together" in auto.strategy_reason
    # And blue-green is refused rather than turned into a stop-start behind the user's back
    assert not asked.fits and asked.strategy == "blue-green"
    assert "do not fit together" in asked.strategy_reason


def test_behind_the_router_blue_green_switches_and_stop_start_evicts_the_old_unit(
    seed_bucket: SeedBucket,
) -> None:
    # Given the router on 8001 in front of mistral_policy_analysis's unit on 8002
    old = runtime("mistral_policy_analysis", 8002, SMALL_GPU, SMALL_RSS, since=at(6, 5))
    snapshot = routed(old)

    # When another model is deployed blue-green (auto), then stop-start
    green = deploy(seed_bucket, "mistral_iac_generation", snapshot)
    stopped = deploy(seed_bucket, "mistral_iac_generation", snapshot, strategy="stop-start")

    # Then blue-green puts it on a spare port and the switch points the router at it
    assert green.fits and green.strategy == "blue-green"
    assert green.unit == "asoba-inference@mistral_iac_generation.service" and green.port == 8003
    assert green.switch is not None and (green.switch.stable_port, green.switch.old_unit) == (
        8001,
        old["unit"],
    )
    assert green.evict_units == []
    # And stop-start evicts the old unit first, then the switch points the router at the new one
    assert stopped.strategy == "stop-start" and stopped.evict_units == [old["unit"]]
    assert stopped.switch is not None and stopped.switch.stable_port == 8001


def test_the_same_model_again_is_a_stop_start_of_its_unit(seed_bucket: SeedBucket) -> None:
    old = runtime("mistral_policy_analysis", 8002, SMALL_GPU, SMALL_RSS, since=at(6, 5))
    result = deploy(seed_bucket, "mistral_policy_analysis", routed(old))
    # its own unit restarts on its port; the router keeps pointing at it (no switch step)
    assert (result.strategy, result.unit, result.port, result.switch) == (
        "stop-start",
        old["unit"],
        8002,
        None,
    )


def test_blue_green_with_nothing_serving_puts_the_router_in_front(seed_bucket: SeedBucket) -> None:
    # Given the seed's instance: Flux, no runtime
    snapshot = instance()
    # When a model is deployed blue-green; and without asking for it
    routed_plan = deploy(seed_bucket, "mistral_iac_generation", snapshot, strategy="blue-green")
    plain = deploy(seed_bucket, "mistral_iac_generation", snapshot)
    # Then the first starts the router on the seed's port in front of a unit of its own
    assert routed_plan.strategy == "blue-green" and routed_plan.switch is not None
    assert (routed_plan.switch.stable_port, routed_plan.switch.old_unit) == (8001, None)
    assert routed_plan.unit == "asoba-inference@mistral_iac_generation.service"
    # And the seed's way stays the default: the primary on its port, no switch
    assert (plain.strategy, plain.unit, plain.port, plain.switch) == ("none", PRIMARY, 8001, None)


def test_keep_behind_the_router_runs_beside_it_not_on_its_port(seed_bucket: SeedBucket) -> None:
    old = runtime("mistral_policy_analysis", 8002, SMALL_GPU, SMALL_RSS, since=at(6, 5))
    result = deploy(seed_bucket, "mistral_iac_generation", routed(old), resident="keep")
    assert result.fits, result.shortfalls
    assert (result.strategy, result.unit, result.port) == (
        "none",
        "asoba-inference@mistral_iac_generation.service",
        8003,
    )
