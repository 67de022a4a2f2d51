"""A real execution's history against what the limits' worst case assumes (local/limits.py):
the events a safety-net round and a command's end cost, and how many states the machine has
outside its loops."""

from __future__ import annotations

import json
from typing import Any

from local import events
from local.executions import run_execution
from local.limits import AWAIT_EVENTS, FLOW_EVENTS, SAFETY_NET_ROUND_EVENTS
from local.stack import nested_machines
from tests.unit.test_history_worst_case import FIXED_STATES


def _states(definition: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for state in definition["States"].values():
        found.append(state)
        for branch in nested_machines(state):
            found += _states(branch)
    return found


def _is_collect_event(event: dict[str, Any]) -> bool:
    return str(event.get("detail", {}).get("document-name", "")).endswith("-collect-resources")


def test_a_safety_net_round_costs_what_the_worst_case_counts(
    sfn: Any, machine_arn: str, tiny_in_bucket: str, instance: Any
) -> None:
    # Given collect-resources loses its status events, so its Await ends by its safety net
    # (run_execution checks every state's size and the history's length, local/limits.py)
    with events.drop(_is_collect_event):
        result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True})
    assert result.status == "SUCCEEDED", (result.error, result.cause)

    names = [
        (e.get("stateEnteredEventDetails") or e.get("stateExitedEventDetails") or {}).get("name")
        for e in result.history
    ]
    types = [e["type"] for e in result.history]
    awaits = [
        i
        for i, (n, t) in enumerate(zip(names, types, strict=True))
        if n == "CollectResources.Await" and t == "TaskStateEntered"
    ]
    assert len(awaits) >= 2, types
    # a timed-out round: the Await's events, then Rearm, up to the next Await
    first, second = awaits[0], awaits[1]
    # the message names every event of the round (a list's repr would be cut short)
    assert second - first == SAFETY_NET_ROUND_EVENTS, " ".join(
        f"{t}:{n}" for t, n in zip(types[first:second], names[first:second], strict=True)
    )
    assert "TaskTimedOut" in types[first:second]
    # the round that ends the command: the Await's events up to Finished?
    last = awaits[-1]
    finished = names.index("CollectResources.Finished?", last)
    assert finished - last == AWAIT_EVENTS, types[last:finished]
    assert types[finished : finished + FLOW_EVENTS] == ["ChoiceStateEntered", "ChoiceStateExited"]

    definition = json.loads(sfn.describe_state_machine(stateMachineArn=machine_arn)["definition"])
    assert len(_states(definition)) <= FIXED_STATES
