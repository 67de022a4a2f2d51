"""The step registry: one name per step, and every instance step sends only what its
document declares, and all it requires."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from asoba_deploy.core import errors
from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.planner.models import SwitchPlan
from asoba_deploy.core.settings import Settings, StackResources
from asoba_deploy.core.state import ExecutionState
from asoba_deploy.core.steps import STEPS, Phase, health_budget, instance_steps, phase
from lambdas.handlers import plan as plan_handler
from tests.unit.conftest import SeedBucket
from tests.unit.planner_support import seed_snapshot

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ROOT / "ssm_documents"

CONFIG = Settings(
    deploy=DeployConfig(
        instance_ids=["i-0123456789abcdef0"], model_bucket="asoba-llm-cache", model_prefix="seed/"
    ),
    stack=StackResources(
        runtime_bundle_uri="https://s3.us-west-2.amazonaws.com/cdk-hnb659fds-assets-123456789012-us-west-2/abc123.zip",
        s5cmd_uri="https://s3.us-west-2.amazonaws.com/cdk-hnb659fds-assets-123456789012-us-west-2/def456",
    ),
)


@pytest.fixture(scope="module")
def qwen_plan(seed_bucket: SeedBucket) -> Plan:
    event = {"request": {"model": "qwen3-14b"}, "snapshot": seed_snapshot().model_dump(mode="json")}
    return Plan.model_validate(plan_handler.plan_event(event, seed_bucket.client, CONFIG))


def state_with(plan: Plan) -> ExecutionState:
    return ExecutionState(
        request=DeployRequest(model=plan.model),
        instance_id="i-0123456789abcdef0",
        plan=plan,
        execution_name="deploy-qwen3-14b-1764640000",
    )


def test_every_spelling_derives_from_the_name() -> None:
    stop = STEPS["stop-flux"]
    assert (stop.label, stop.key, stop.function_id, stop.handler) == (
        "StopFlux",
        "stop_flux",
        "StopFlux",
        "handlers.stop_flux.handler",
    )
    assert (stop.document, stop.result_path, stop.error) == (
        "stop-flux",
        "$.steps.stop_flux",
        errors.StopFluxFailed,
    )


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_step_has_its_handler_file_and_its_test(name: str) -> None:
    step = STEPS[name]
    handler = ROOT / "lambdas" / "handlers" / f"{step.key}.py"
    assert handler.is_file() == step.has_function, handler
    if step.document is not None:
        assert (DOCUMENTS / f"{step.document}.yaml").is_file()
        tests = list((ROOT / "tests").rglob(f"test_{step.key}.py"))
        assert tests, f"no tests/**/test_{step.key}.py for the {name} step"


@pytest.mark.parametrize("step", instance_steps(), ids=lambda s: s.name)
def test_instance_step_errors_are_named_for_their_step(step: object) -> None:
    assert step.error.__name__ == f"{step.label}Failed"  # type: ignore[attr-defined]
    assert issubclass(step.error, errors.CommandFailed)  # type: ignore[attr-defined]


def test_phases_that_take_one_step_have_one() -> None:
    for which in (Phase.INPUT, Phase.CHECK, Phase.LOCK, Phase.PLAN, Phase.UNDO, Phase.RECORD):
        assert len(phase(which)) == 1, which


def as_resident(plan: Plan) -> Plan:
    """The plan deployed as a resident unit beside others, two of which it evicts."""
    evicted = ["asoba-inference@old-a.service", "asoba-inference@old-b.service"]
    switch = SwitchPlan(stable_port=8001, old_unit="asoba-inference.service", old_port=8001, old_model="x")
    return plan.model_copy(
        update={
            "unit": f"asoba-inference@{plan.deploy_model}.service",
            "port": 8003,
            "evict_units": evicted,
            "switch": switch,
        }
    )


@pytest.mark.parametrize("resident", [False, True], ids=["primary", "resident"])
@pytest.mark.parametrize("step", instance_steps(), ids=lambda s: s.name)
def test_parameters_match_the_document(step: object, resident: bool, qwen_plan: Plan) -> None:
    spec = step.instance  # type: ignore[attr-defined]
    document = step.document  # type: ignore[attr-defined]
    declared = yaml.safe_load((DOCUMENTS / f"{document}.yaml").read_text())["parameters"]
    if document in ("evict", "switch") and not resident:
        with pytest.raises(errors.CommandFailed, match=r"evict_units|plan\.switch"):
            spec.parameters(CONFIG, state_with(qwen_plan))
        return
    sent = spec.parameters(CONFIG, state_with(as_resident(qwen_plan) if resident else qwen_plan))
    assert set(sent) <= set(declared), f"{document} does not declare {set(sent) - set(declared)}"
    required = {name for name, p in declared.items() if "default" not in p}
    assert required <= set(sent), f"{document} requires {required - set(sent)}"
    for name, value in sent.items():
        rule = declared[name]
        if "allowedValues" in rule:
            assert value in rule["allowedValues"], (name, value)
        else:
            assert re.fullmatch(rule["allowedPattern"], value), (name, value)


def test_health_budget_grows_with_model_size(qwen_plan: Plan) -> None:
    small = health_budget(CONFIG, state_with(qwen_plan.model_copy(update={"total_bytes": 1024**3})))
    large = health_budget(CONFIG, state_with(qwen_plan.model_copy(update={"total_bytes": 30 * 1024**3})))
    assert large - small == 29 * CONFIG.step_budgets.health_check_per_gb


def test_a_resident_plan_sends_its_own_unit_and_folders(qwen_plan: Plan) -> None:
    plan = as_resident(qwen_plan)
    state = state_with(plan)
    roots = CONFIG.instance_roots
    own = {
        "ServiceUnit": plan.unit,
        "EnvDir": f"{roots.env_dir}/models/{plan.deploy_model}",
        "StateDir": f"{roots.state_dir}/models/{plan.deploy_model}",
    }
    for name in ("snapshot-previous", "rollback"):
        sent = STEPS[name].instance.parameters(CONFIG, state)  # type: ignore[union-attr]
        assert {k: sent[k] for k in own} == own, name
    installed = STEPS["install"].instance.parameters(CONFIG, state)  # type: ignore[union-attr]
    assert (installed["ServiceUnit"], installed["EnvDir"], installed["Port"]) == (
        plan.unit,
        own["EnvDir"],
        "8003",
    )
    started = STEPS["start-service"].instance.parameters(CONFIG, state)  # type: ignore[union-attr]
    assert started["ServiceUnit"] == plan.unit
    # the rollback starts the evicted residents again; the evict step stops exactly them
    rollback = STEPS["rollback"].instance.parameters(CONFIG, state)  # type: ignore[union-attr]
    assert rollback["RestartUnits"] == (
        "asoba-inference@old-a.service asoba-inference@old-b.service asoba-inference.service"
    )
    evict = STEPS["evict"].instance.parameters(CONFIG, state)  # type: ignore[union-attr]
    assert evict["Units"] == "asoba-inference@old-a.service asoba-inference@old-b.service"
    # once this execution's sync is complete (the marker start-service waits for next): the
    # evicted models serve on while the new one syncs, and its budget covers the sync's
    assert {k: evict[k] for k in ("ModelPath", "WaitForSync", "ExecutionName")} == {
        k: started[k] for k in ("ModelPath", "WaitForSync", "ExecutionName")
    }
    assert evict["WaitForSync"] == "true"
    assert STEPS["evict"].instance.budget(CONFIG, state) == (  # type: ignore[union-attr]
        CONFIG.step_budgets.evict + CONFIG.step_budgets.sync
    )
    assert int(evict["SyncWaitSeconds"]) == CONFIG.step_budgets.sync
    # and the switch: the router's stable port to this unit, the old one drained; rollback undoes it
    switched = STEPS["switch"].instance.parameters(CONFIG, state)  # type: ignore[union-attr]
    assert (
        switched["StablePort"],
        switched["BackendPort"],
        switched["BackendUnit"],
        switched["OldUnit"],
    ) == (
        "8001",
        "8003",
        plan.unit,
        "asoba-inference.service",
    )
    assert switched["EnvDir"] == roots.env_dir  # the router's files are the primary's
    assert rollback["RouterRestore"] == "true"
    # the primary's plan sends no RestartUnits and the seed's folders
    primary = STEPS["rollback"].instance.parameters(CONFIG, state_with(qwen_plan))  # type: ignore[union-attr]
    assert "RestartUnits" not in primary and "RouterRestore" not in primary
    assert (primary["ServiceUnit"], primary["EnvDir"]) == ("asoba-inference.service", roots.env_dir)
