"""Turn the check-instance document's report into metrics and a verdict."""

from __future__ import annotations

from typing import Any

from asoba_deploy.core import errors, metric_names


def failed_checks(result: dict[str, Any]) -> list[str]:
    checks = result.get("checks") or {}
    items = checks.items() if isinstance(checks, dict) else ((c.get("name", "?"), c) for c in checks)
    failed = []
    for name, check in items:
        ok = check.get("ok") if isinstance(check, dict) else bool(check)
        if not ok:
            detail = check.get("detail") or check.get("error") if isinstance(check, dict) else None
            failed.append(f"{name}: {detail}" if detail else str(name))
    if result.get("ok") is False and not failed:
        failed.append(str(result.get("error") or "validate document reported failure"))
    return failed


def metrics_for(result: dict[str, Any] | None, *, online: bool) -> dict[str, float]:
    values: dict[str, float] = {metric_names.INSTANCE_ONLINE: 1.0 if online else 0.0}
    if result is None:
        values[metric_names.VALIDATION_PASSED] = 0.0
        return values
    values[metric_names.VALIDATION_PASSED] = 0.0 if failed_checks(result) else 1.0
    gpu_free = result.get("gpu_free_bytes")
    if isinstance(gpu_free, int | float):
        values["FreeGpuMemoryBytes"] = float(gpu_free)
    healthy = result.get("runtime_healthy")
    if isinstance(healthy, bool):
        values["RuntimeHealthy"] = 1.0 if healthy else 0.0
    return values


def error_class(name: str) -> type[errors.DeployError]:
    found = getattr(errors, name, None)
    if isinstance(found, type) and issubclass(found, errors.DeployError):
        return found
    return errors.CheckInstanceFailed
