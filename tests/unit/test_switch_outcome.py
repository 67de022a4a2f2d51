"""What a deployment's record says of its switch, from the steps that ran: a stop-start behind
the router is down from the evict's stop (after the sync) to the router's move, on the
instance's clock; a step its run_if skipped inside the parallel group is a step that did not run."""

from __future__ import annotations

from typing import Any

import pytest

from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.ledger import measure_switch
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.planner.models import SwitchPlan
from asoba_deploy.core.state import ExecutionState
from lambdas.handlers import plan as plan_handler
from tests.unit.conftest import SeedBucket
from tests.unit.planner_support import seed_snapshot
from tests.unit.test_steps import CONFIG


@pytest.fixture(scope="module")
def qwen_plan(seed_bucket: SeedBucket) -> Plan:
    event = {"request": {"model": "qwen3-14b"}, "snapshot": seed_snapshot().model_dump(mode="json")}
    return Plan.model_validate(plan_handler.plan_event(event, seed_bucket.client, CONFIG))


def _command(step: str, result: dict[str, Any], sent_at: float) -> dict[str, Any]:
    return CommandRef(
        step=step, document=step, command_id="c" * 36, instance_id="i-0123456789abcdef0",
        sent_at=sent_at, first_sent_at=sent_at, deadline=sent_at + 600, status="Success", result=result,
    ).model_dump(mode="json")  # fmt: skip


def _routed_stop_start(qwen_plan: Plan) -> Plan:
    switch = SwitchPlan(stable_port=8001, old_unit="asoba-inference.service", old_port=8001, old_model="x")
    return qwen_plan.model_copy(
        update={
            "strategy": "stop-start",
            "unit": "asoba-inference@qwen3-14b.service",
            "port": 8002,
            "evict_units": ["asoba-inference.service"],
            "switch": switch,
        }
    )


def test_a_routed_stop_start_is_down_from_the_evicts_stop_to_the_routers_move(qwen_plan: Plan) -> None:
    # Given the evict command sent at once but stopping the old unit only after a long sync
    state = ExecutionState.model_validate(
        {
            "request": DeployRequest(model="qwen3-14b").model_dump(mode="json"),
            "instance_id": "i-0123456789abcdef0",
            "plan": _routed_stop_start(qwen_plan).model_dump(mode="json"),
            "steps": {
                "evict": _command("evict", {"ok": True, "stopped_at": "2026-12-07T18:02:00.250Z"}, 1000.0),
                "switch": _command("switch", {"ok": True, "switched_at": "2026-12-07T18:02:09.750Z"}, 1200.0),
            },
        }
    )

    outcome = measure_switch(state)

    # Then the downtime is the instance's 9.5 s, not the 200 s since the evict was sent
    assert outcome is not None
    assert (outcome.strategy, outcome.downtime_s) == ("stop-start", 9.5)
    assert "instance's clock" in outcome.basis


def test_a_step_skipped_inside_the_parallel_group_did_not_run(qwen_plan: Plan) -> None:
    # Given the state after Prepare when the plan evicted nothing ($.steps.evict says skipped)
    state = ExecutionState.model_validate(
        {
            "request": DeployRequest(model="qwen3-14b").model_dump(mode="json"),
            "instance_id": "i-0123456789abcdef0",
            "plan": qwen_plan.model_dump(mode="json"),
            "steps": {
                "install": _command("install", {"ok": True}, 1.0),
                "evict": {"skipped": True},
            },
        }
    )
    # Then it reads as a step that did not run, and the ones that ran stay
    assert set(state.steps) == {"install"}
    assert state.result("evict") is None
