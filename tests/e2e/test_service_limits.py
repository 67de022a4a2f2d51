"""A real execution's history against what the limits' worst case assumes (local/limits.py):
the events a poll round costs, and how many states the machine has outside its poll loops."""

from __future__ import annotations

import json
from typing import Any

from local.executions import run_execution
from local.limits import POLL_ROUND_EVENTS
from tests.unit.test_history_worst_case import FIXED_STATES


def _states(definition: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for state in definition["States"].values():
        found.append(state)
        for branch in state.get("Branches", []):
            found += _states(branch)
    return found


def test_a_poll_round_costs_what_the_worst_case_counts(
    sfn: Any, machine_arn: str, tiny_in_bucket: str, instance: Any
) -> None:
    # run_execution checks every state's size and the history's length (local/limits.py)
    result = run_execution(sfn, machine_arn, {"model": tiny_in_bucket, "dry_run": True})
    assert result.status == "SUCCEEDED", (result.error, result.cause)

    names = [
        (e.get("stateEnteredEventDetails") or e.get("stateExitedEventDetails") or {}).get("name")
        for e in result.history
    ]
    start = names.index("CollectResources.Wait")  # WaitStateEntered of the first round
    end = names.index("CollectResources.Finished?", start) + 1  # its ChoiceStateEntered ...
    assert names[end] == "CollectResources.Finished?"  # ... and ChoiceStateExited
    assert end + 1 - start == POLL_ROUND_EVENTS, [e["type"] for e in result.history[start : end + 1]]

    definition = json.loads(sfn.describe_state_machine(stateMachineArn=machine_arn)["definition"])
    assert len(_states(definition)) <= FIXED_STATES
    # the Waits back off: the first ones wait the configured interval
    sent = result.state_output("CollectResources")
    assert sent["command"]["wait_seconds"] == 1
