"""Where the benchmark sits in the synthesized machine: after ChangeInstance, outside its
rollback, behind its own Choice and Catch."""

from __future__ import annotations

from typing import Any

from local.stack import Synthesized, nested_machines


def named_states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = dict(definition["States"])
    for state in definition["States"].values():
        for branch in nested_machines(state):
            found.update(named_states(branch))
    return found


def test_the_benchmark_runs_after_the_change_with_its_own_catch(synth: Synthesized) -> None:
    states = named_states(synth.state_machine_definition)
    change = states["ChangeInstance"]
    # not inside the change (whose Catch rolls back) ...
    inside = named_states({"States": {"ChangeInstance": change}})
    assert "Benchmark" not in inside and "Measure" not in inside
    # ... but after it succeeded: skipped by "benchmark": false, else run inside Measure
    assert change["Next"] == "Measure?"
    choice = states["Measure?"]
    (skip,) = choice["Choices"]
    assert skip["Next"] == "Measure.Skipped" and choice["Default"] == "Measure"
    assert {"Variable": "$.request.benchmark", "BooleanEquals": False} in skip["And"]
    measure = states["Measure"]
    assert "Benchmark" in named_states({"States": {"Measure": measure}})
    # a failure of any kind is caught, kept at $.benchmark_failure, and nothing is undone
    (catch,) = measure["Catch"]
    assert catch == {
        "ErrorEquals": ["States.ALL"],
        "ResultPath": "$.benchmark_failure",
        "Next": "Measure.Failed",
    }
    assert "Next" not in states["Measure.Failed"] and "Next" not in measure
