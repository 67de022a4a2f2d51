"""local/limits.py: what AWS refuses fails every emulated execution, naming the state and size."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local.limits import HISTORY_EVENTS, ServiceLimitExceeded, check_history

KIB = 1024


def entered(event_id: int, name: str, payload: Any, previous: int = 0) -> dict[str, Any]:
    return {
        "id": event_id,
        "previousEventId": previous,
        "type": "TaskStateEntered",
        "stateEnteredEventDetails": {"name": name, "input": json.dumps(payload)},
    }


def test_a_state_over_256_kib_is_refused_naming_the_state_and_size() -> None:
    big = {"plan": {"files": ["x" * 1000] * 300}}  # ~300 KiB
    history = [
        {
            "id": 1,
            "previousEventId": 0,
            "type": "ExecutionStarted",
            "executionStartedEventDetails": {"input": "{}"},
        },
        entered(2, "Plan", {}, previous=1),
        {
            "id": 3,
            "previousEventId": 2,
            "type": "LambdaFunctionSucceeded",
            "lambdaFunctionSucceededEventDetails": {"output": json.dumps(big)},
        },
    ]
    size = len(json.dumps(big).encode())
    assert 256 * KIB < size < 320 * KIB
    with pytest.raises(ServiceLimitExceeded) as raised:
        check_history(history)
    assert "state Plan" in str(raised.value) and f"{size:,} bytes" in str(raised.value)


def test_sizes_are_utf8_bytes_not_characters() -> None:
    # 100 Ki characters of a 3-byte character: 300 KiB on the wire
    history = [entered(1, "Sync.Poll", {"text": "\u20ac" * (100 * KIB)})]
    with pytest.raises(ServiceLimitExceeded, match=r"Sync\.Poll"):
        check_history(history)
    check_history([entered(1, "Sync.Poll", {"text": "e" * (100 * KIB)})])


def test_a_history_over_25000_events_is_refused() -> None:
    history = [entered(i, f"S{i}", {}, previous=i - 1) for i in range(1, HISTORY_EVENTS + 2)]
    assert len(history) == 25_001
    with pytest.raises(ServiceLimitExceeded, match=r"25,001"):
        check_history(history)
    check_history(history[:HISTORY_EVENTS])


def test_a_lambda_response_over_6_mb_is_refused_as_such() -> None:
    history = [
        entered(1, "CollectResources.Poll", {}),
        {
            "id": 2,
            "previousEventId": 1,
            "type": "LambdaFunctionSucceeded",
            "lambdaFunctionSucceededEventDetails": {"output": "x" * (7 * 1024 * 1024)},
        },
    ]
    with pytest.raises(ServiceLimitExceeded, match=r"CollectResources\.Poll: a Lambda response"):
        check_history(history)
