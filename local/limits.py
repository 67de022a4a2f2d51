"""AWS service limits moto does not enforce, checked on every emulated execution's history.

`local.executions` runs `check_history` on every execution it waits for, so a test whose
execution would fail on AWS (a state over 256 KiB, a history over 25,000 events, a Lambda
answer over 6 MB) fails here too, naming the state and the size.

It also holds the worst case of the history a deployment can write (`worst_case_events`),
from the registry's budgets and the safety-net rounds of the event-driven steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html
STATE_PAYLOAD_BYTES = 256 * 1024  # input/output of a task, state or execution (UTF-8)
HISTORY_EVENTS = 25_000  # events in one execution's history
# https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024  # synchronous invocation response

# The event detail fields that carry a state's JSON payload.
PAYLOAD_FIELDS = ("input", "output", "parameters")
LAMBDA_RESULT_DETAILS = ("lambdaFunctionSucceededEventDetails", "taskSucceededEventDetails")


class ServiceLimitExceeded(AssertionError):
    """The execution did something AWS refuses (AssertionError: pytest reports it as a failure)."""


def _state_of(event: dict[str, Any], by_id: dict[int, dict[str, Any]]) -> str:
    """The state an event belongs to: the nearest StateEntered before it in its chain."""
    seen = 0
    current: dict[str, Any] | None = event
    while current is not None and seen < 10_000:
        for key in ("stateEnteredEventDetails", "stateExitedEventDetails"):
            details = current.get(key)
            if details and details.get("name"):
                return str(details["name"])
        current = by_id.get(int(current.get("previousEventId") or 0))
        seen += 1
    return "(execution)"


def check_history(history: Iterable[dict[str, Any]], *, execution: str = "") -> None:
    """Raise ServiceLimitExceeded at the first event AWS would have refused."""
    events = list(history)
    where = f" in {execution}" if execution else ""
    if len(events) > HISTORY_EVENTS:
        raise ServiceLimitExceeded(
            f"history of {len(events):,} events{where}: Step Functions stops an execution at "
            f"{HISTORY_EVENTS:,} events (last state: {_state_of(events[-1], _index(events))})"
        )
    by_id = _index(events)
    for event in events:
        for key, details in event.items():
            if not key.endswith("EventDetails") or not isinstance(details, dict):
                continue
            for field in PAYLOAD_FIELDS:
                value = details.get(field)
                if not isinstance(value, str):
                    continue
                size = len(value.encode("utf-8"))
                if key in LAMBDA_RESULT_DETAILS and field == "output" and size > LAMBDA_RESPONSE_BYTES:
                    raise ServiceLimitExceeded(
                        f"state {_state_of(event, by_id)}{where}: a Lambda response of {size:,} bytes "
                        f"(Lambda's limit: {LAMBDA_RESPONSE_BYTES:,}) in {event.get('type')}"
                    )
                if size > STATE_PAYLOAD_BYTES:
                    raise ServiceLimitExceeded(
                        f"state {_state_of(event, by_id)}{where}: {field} of {size:,} bytes in "
                        f"{event.get('type')} (Step Functions' limit: {STATE_PAYLOAD_BYTES:,} bytes)"
                    )


def _index(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(e["id"]): e for e in events if "id" in e}


# --- the worst case of a deployment's history ---------------------------------------------
# Events each state type writes once entered (Step Functions' history; counted in a real
# execution by tests/e2e/test_service_limits.py): a Lambda task 5 (Entered, Scheduled,
# Started, Succeeded, Exited), a Wait, Choice or Pass 2, a `.waitForTaskToken` task 6 (its
# TaskSubmitted besides, then TaskSucceeded, TaskFailed or TaskTimedOut).
TASK_EVENTS = 5
FLOW_EVENTS = 2
AWAIT_EVENTS = 6
# One safety-net round of the run-on-instance fragment: the Await timed out, Rearm, Await again.
# A timed-out Await writes nothing later (its token refused, local/cloud.py).
SAFETY_NET_ROUND_EVENTS = AWAIT_EVENTS + FLOW_EVENTS
# One command: send, the Await round that ends it, Finished?.
COMMAND_EVENTS = TASK_EVENTS + AWAIT_EVENTS + FLOW_EVENTS


def poll_rounds(budget: float, schedule: Any) -> int:
    """How many rounds `schedule(elapsed) -> seconds` fits into `budget` seconds (plus the one
    that crosses the deadline)."""
    elapsed, rounds = 0.0, 0
    while elapsed <= budget:
        elapsed += max(1, schedule(elapsed))
        rounds += 1
    return rounds


def step_events(budget: float, round_seconds: Any) -> int:
    """Events of one instance step whose command runs `budget` seconds and whose every status
    event is lost: a safety-net round each `round_seconds(elapsed)`, then the command's end."""
    rounds = poll_rounds(budget, round_seconds)
    return COMMAND_EVENTS + FLOW_EVENTS + SAFETY_NET_ROUND_EVENTS * max(0, rounds - 1)


def worst_case_events(
    budgets: dict[str, int],
    schedule: Any,
    *,
    resend: Iterable[str] = (),
    resend_every: float | None = None,
    fixed_states: int = 0,
) -> int:
    """Events of a deployment whose every instance step runs its whole budget (step key ->
    seconds) and loses every status event, its Await rounds on `schedule`; resend steps send a
    new command every `resend_every` seconds (one command's run), each with its own rounds.
    `fixed_states`: every other state, entered once."""
    resending = set(resend)
    total = fixed_states * TASK_EVENTS
    for key, budget in budgets.items():
        if key in resending and resend_every:
            commands = max(1, -(-int(budget) // int(resend_every)))
            total += commands * step_events(resend_every, schedule) + (commands - 1) * FLOW_EVENTS
        else:
            total += step_events(budget, schedule)
    return total
