"""The health check waits on the instance: one command per budget, sent again only when the
budget outlasts one command (core/instance_step.py poll_step)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.errors import HealthCheckFailed
from asoba_deploy.core.instance_step import WAIT_RUN_SECONDS, poll_step
from asoba_deploy.core.settings import Settings
from asoba_deploy.core.steps import STEPS

CONFIG = Settings(deploy=DeployConfig(instance_ids=["i-0123456789abcdef0"], model_bucket="models"))
HEALTH = STEPS["health-check"]


class FakeSsm:
    def __init__(self, status: str) -> None:
        self.stdout = json.dumps({"ok": True, "status": status}) + "\n"

    def get_command_invocation(self, **_: Any) -> dict[str, Any]:
        return {"Status": "Success", "StandardOutputContent": self.stdout}


def health_ref(budget: float) -> CommandRef:
    return CommandRef(
        step="health_check",
        document="health-check",
        plugins=["healthCheck"],
        command_id="c-1",
        instance_id="i-0123456789abcdef0",
        sent_at=0.0,
        first_sent_at=0.0,
        deadline=budget,
    )


def test_still_loading_when_one_command_held_the_whole_budget_fails() -> None:
    # a 120 s budget: one command waited ~95 s on the instance and still saw "loading"
    with pytest.raises(
        HealthCheckFailed, match=r"did not turn healthy within 106 s \(last status: loading\)"
    ):
        poll_step(HEALTH, CONFIG, FakeSsm("loading"), health_ref(120), now=106.0)


def test_a_budget_longer_than_one_command_sends_it_again() -> None:
    budget = 3 * WAIT_RUN_SECONDS
    ref = poll_step(HEALTH, CONFIG, FakeSsm("loading"), health_ref(budget), now=WAIT_RUN_SECONDS)
    assert ref.status == "Resend"


def test_healthy_ends_the_step() -> None:
    ref = poll_step(HEALTH, CONFIG, FakeSsm("healthy"), health_ref(120), now=30.0)
    assert (ref.status, ref.result) == ("Success", {"ok": True, "status": "healthy"})
