"""The rollout's Map as synthesized: one per-instance deployment, for one instance or a fleet."""

from __future__ import annotations

from collections import Counter
from typing import Any

from asoba_deploy.core.steps import STEPS, Grant, Phase, phase, the
from local.stack import Synthesized, nested_machines
from stacks.rollout import ITEM_STATE


def _every_state_name(machine: dict[str, Any]) -> list[str]:
    names = []
    for name, state in machine["States"].items():
        names.append(name)
        for inner in nested_machines(state):
            names.extend(_every_state_name(inner))
    return names


def test_the_deploy_path_is_the_rollout_map(synth: Synthesized) -> None:
    states = synth.state_machine_definition["States"]
    # Given the machine: every deployment (one instance_id or a fleet) goes through the Map
    mode = states["Mode?"]
    assert mode["Default"] == "Rollout"
    rollout = states["Rollout"]
    assert rollout["Type"] == "Map"
    assert rollout["ItemProcessor"]["ProcessorConfig"] == {"Mode": "INLINE"}
    assert (rollout["ItemsPath"], rollout["MaxConcurrencyPath"]) == ("$.targets", "$.rollout.max_concurrency")
    assert rollout["ItemSelector"] == ITEM_STATE
    # each iteration's output is small: the whole state is never the Map's result
    assert rollout["ResultPath"] == "$.results"
    # after it: one instance's own output, or the fleet's table
    assert states["Fleet?"]["Default"] == "Done"
    assert (states["Done"]["Type"], states["Done"]["OutputPath"], states["Done"]["End"]) == (
        "Pass",
        "$.results[0]",
        True,
    )
    assert states["RolloutFailed"]["Error"] == "RolloutFailed"


def test_the_per_instance_deployment_is_one_fragment_inside_the_map(synth: Synthesized) -> None:
    definition = synth.state_machine_definition
    names = Counter(_every_state_name(definition))
    # Then no state is built twice (Step Functions requires unique names; a copy would need others)
    assert [name for name, count in names.items() if count > 1] == []
    # and every state of the per-instance deployment lies in the Map's Instance branch, none
    # outside the Map: the single-instance path runs the same states as each fleet iteration
    processor = definition["States"]["Rollout"]["ItemProcessor"]
    (branch,) = processor["States"]["Instance"]["Branches"]
    per_instance = set(_every_state_name(branch))
    outside = set(_every_state_name(definition)) - set(_every_state_name(processor))
    deploy_steps = [
        s.label
        for p in (Phase.INSPECT, Phase.BACKUP, Phase.CHANGE, Phase.UNDO)
        for s in phase(p)
        if s.instance
    ]
    for label in (
        "AcquireLock",
        "Deploy",
        "Plan",
        "RecordDeployment",
        "ReleaseLock",
        "RecordFailure",
        *deploy_steps,
    ):
        assert label in per_instance, label
        assert label not in outside, label
    assert branch["StartAt"] == "AcquireLock"
    # a single instance skips the admission and fails with the step's own error
    first = processor["States"][processor["StartAt"]]
    assert first["Type"] == "Choice" and first["Default"] == "Instance"
    catch = processor["States"]["Instance"]["Catch"][0]
    assert processor["States"][catch["Next"]]["Default"] == "InstanceFailed"
    reraise = processor["States"]["InstanceFailed"]
    assert (reraise["ErrorPath"], reraise["CausePath"]) == ("$.failure.Error", "$.failure.Cause")


def test_the_rollout_function_may_count_in_the_lock_table_and_read_the_ledger(synth: Synthesized) -> None:
    step = the(Phase.ROLLOUT)
    assert step.grants == {Grant.LOCK_TABLE, Grant.LEDGER_TABLE}
    resources = synth.template["Resources"]
    function = next(
        r
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == step.handler
    )
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = [
        s
        for r in resources.values()
        if r["Type"] == "AWS::IAM::Policy" and {"Ref": role} in r["Properties"].get("Roles", [])
        for s in r["Properties"]["PolicyDocument"]["Statement"]
    ]
    actions = {
        a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {"dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:Query"} <= actions
    # nothing on instances: the rollout step only admits, counts and summarizes
    assert not any(a.startswith(("ssm:", "ec2:")) for a in actions)
    assert STEPS["rollout"].instance is None


def test_rollback_on_failure_is_a_second_map_of_the_rollback_document_only(synth: Synthesized) -> None:
    states = synth.state_machine_definition["States"]
    choice = states["RolloutSucceeded?"]
    assert [c["Next"] for c in choice["Choices"]] == ["RolloutComplete", "RollBackRollout"]
    assert choice["Choices"][1]["Variable"] == "$.rollout.rollback_on_failure"
    undo = states["RollBackRollout"]
    assert (undo["Type"], undo["ItemsPath"], undo["ResultPath"]) == (
        "Map",
        "$.summary.rows",
        "$.summary.rows",
    )
    names = set(_every_state_name(undo["ItemProcessor"]))
    # the instance's lock around the rollback document; none of the deployment's own states
    assert {"AcquireUndoLock", "UndoDeployment", "ReleaseUndoLock", "InstanceRolledBack"} <= names
    assert not names & {"AcquireLock", "Deploy", "Rollback", "RecordDeployment"}
    assert states["SummarizeRollBack"]["Next"] == "RolloutFailed"


def test_an_instance_of_a_fleet_runs_no_more_states_than_the_worst_case_counts(synth: Synthesized) -> None:
    # The fleet's history worst case (tests/unit/test_rollout.py) counts this many states per
    # instance: the Rollout Map's deployment and the RollBackRollout Map's undo
    from tests.unit.test_history_worst_case import PER_INSTANCE_STATES

    states = synth.state_machine_definition["States"]
    per_instance = sum(
        len(_every_state_name(inner))
        for name in ("Rollout", "RollBackRollout")
        for inner in nested_machines(states[name])
    )
    assert 0 < per_instance <= PER_INSTANCE_STATES
