"""Say what failed and what the rollback put back, for the execution's cause."""

from __future__ import annotations

import json
from typing import Any


def _cause_text(cause: Any) -> str:
    # A Lambda error's Cause is the runtime's JSON; the message is what people need.
    if isinstance(cause, str):
        try:
            parsed = json.loads(cause)
        except json.JSONDecodeError:
            return cause
        if isinstance(parsed, dict) and "errorMessage" in parsed:
            return str(parsed["errorMessage"])
    return str(cause)


def explain(state: dict[str, Any]) -> dict[str, str]:
    failure = state.get("failure") or {}
    error = str(failure.get("Error") or "DeploymentFailed")
    cause = _cause_text(failure.get("Cause", ""))
    rollback_error = state.get("rollback_error")
    if rollback_error:
        restored = (
            f"rollback FAILED too ({_cause_text(rollback_error.get('Cause', ''))}); inspect the instance"
        )
    else:
        result = ((state.get("steps") or {}).get("rollback") or {}).get("result") or {}
        parts = []
        for key, label in (("restored", "restored"), ("started", "restarted"), ("removed", "removed")):
            value = result.get(key)
            if value:
                parts.append(f"{label} {', '.join(map(str, value)) if isinstance(value, list) else value}")
        restored = "rolled back: " + ("; ".join(parts) if parts else "nothing needed restoring")
    return {"Error": error, "Cause": f"{cause} -- {restored}"}
