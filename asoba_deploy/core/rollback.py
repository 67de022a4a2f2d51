"""Say what failed and what the rollback put back, for the execution's cause."""

from __future__ import annotations

import json
from typing import Any

from asoba_deploy.core.state import ExecutionState, Failure


def cause_text(cause: Any) -> str:
    # A Lambda error's Cause is the runtime's JSON; the message is what people need.
    if isinstance(cause, str):
        try:
            parsed = json.loads(cause)
        except json.JSONDecodeError:
            return cause
        if isinstance(parsed, dict) and "errorMessage" in parsed:
            return str(parsed["errorMessage"])
    return str(cause)


def explain(state: ExecutionState) -> dict[str, str]:
    failure = state.failure or Failure()
    cause = cause_text(failure.Cause)
    if state.rollback_error is not None:
        restored = f"rollback FAILED too ({cause_text(state.rollback_error.Cause)}); inspect the instance"
    else:
        result = state.result("rollback") or {}
        parts = []
        for key, label in (("restored", "restored"), ("started", "restarted"), ("removed", "removed")):
            value = result.get(key)
            if value:
                parts.append(f"{label} {', '.join(map(str, value)) if isinstance(value, list) else value}")
        restored = "rolled back: " + ("; ".join(parts) if parts else "nothing needed restoring")
    return {"Error": failure.Error, "Cause": f"{cause} -- {restored}"}
