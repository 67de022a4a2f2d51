"""Start executions on the emulated state machine and read back what happened."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from local.limits import check_history


@dataclass
class ExecutionResult:
    arn: str
    status: str
    output: Any
    error: str | None
    cause: str | None
    history: list[dict[str, Any]] = field(repr=False)
    seconds: float = 0.0

    @property
    def states_entered(self) -> list[str]:
        return [
            e["stateEnteredEventDetails"]["name"] for e in self.history if "stateEnteredEventDetails" in e
        ]

    @property
    def states_exited(self) -> list[str]:
        return [e["stateExitedEventDetails"]["name"] for e in self.history if "stateExitedEventDetails" in e]

    def state_output(self, name: str) -> Any:
        for event in reversed(self.history):
            details = event.get("stateExitedEventDetails")
            if details and details["name"] == name:
                return json.loads(details.get("output") or "null")
        raise KeyError(f"state {name} never exited")


def history_failure(history: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    for event in reversed(history):
        details = event.get("executionFailedEventDetails")
        if details:
            return details.get("error"), details.get("cause")
    return None, None


def run_execution(
    sfn: Any, machine_arn: str, payload: Any, *, name: str | None = None, timeout: float = 300.0
) -> ExecutionResult:
    started = time.monotonic()
    # moto names an unnamed execution "None", so every execution gets a name here
    arn = sfn.start_execution(
        stateMachineArn=machine_arn, input=json.dumps(payload), name=name or f"run-{uuid.uuid4().hex[:12]}"
    )["executionArn"]
    return wait_for_execution(sfn, arn, started=started, timeout=timeout)


def wait_for_execution(
    sfn: Any, arn: str, *, started: float | None = None, timeout: float = 300.0
) -> ExecutionResult:
    started = started or time.monotonic()
    while True:
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            break
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"execution {arn} still RUNNING after {timeout} s")
        time.sleep(0.1)
    history: list[dict[str, Any]] = []
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn):
        history.extend(page["events"])
    # what AWS would refuse fails here too: state sizes, history length, Lambda responses
    check_history(history, execution=arn.rsplit(":", 1)[-1])
    error, cause = history_failure(history)
    output = json.loads(described["output"]) if described.get("output") else None
    return ExecutionResult(
        arn=arn,
        status=described["status"],
        output=output,
        error=described.get("error", error) or error,
        cause=described.get("cause", cause) or cause,
        history=history,
        seconds=time.monotonic() - started,
    )
