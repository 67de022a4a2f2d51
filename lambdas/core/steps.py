"""The instance steps: which document each sends, with which parameters, under which budget.

Parameters are built from the state the machine carries (the request, the plan, the
snapshot). Every value was validated before it got here, and the document's own
allowedPattern checks it again on the SSM side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import (
    CommandFailed,
    DeployError,
    HealthCheckFailed,
    InstallFailed,
    StopFailed,
    SyncFailed,
    ValidationFailed,
)
from core.settings import Settings

State = dict[str, Any]
GB = 1024**3


def _plan(state: State) -> dict[str, Any]:
    plan = state.get("plan")
    if not isinstance(plan, dict):
        raise CommandFailed("this step needs the plan in $.plan")
    return plan


RUNTIME_UNIT = "asoba-inference.service"

# Document parameter -> where that root lives on the instance (core.settings.InstanceRoots).
ROOT_PARAMETERS = {
    "ModelsRoot": "models_root",
    "RuntimeRoot": "runtime_root",
    "UnitDir": "unit_dir",
    "EnvDir": "env_dir",
    "ProfileDir": "profile_dir",
    "StateDir": "state_dir",
}


def _roots(config: Settings, *names: str) -> dict[str, str]:
    return {name: str(getattr(config.instance_roots, ROOT_PARAMETERS[name])) for name in names}


def _units(config: Settings) -> dict[str, str]:
    return {"FluxUnit": config.flux_service, "ServiceUnit": RUNTIME_UNIT}


def collect_parameters(config: Settings, state: State) -> dict[str, str]:
    return {**_roots(config, "ModelsRoot", "RuntimeRoot", "EnvDir"), **_units(config)}


def snapshot_parameters(config: Settings, state: State) -> dict[str, str]:
    return {
        **_roots(config, "StateDir", "RuntimeRoot", "UnitDir", "EnvDir", "ProfileDir"),
        **_units(config),
    }


def stop_parameters(config: Settings, state: State) -> dict[str, str]:
    units = _plan(state).get("stop_services") or [config.flux_service]
    return {"Unit": str(units[0]), "WaitSeconds": str(max(10, config.step_budgets.stop - 30))}


def sync_parameters(config: Settings, state: State) -> dict[str, str]:
    plan = _plan(state)
    return {
        "ModelName": plan["deploy_model"],
        "SourceUri": plan["source_uri"],
        **_roots(config, "ModelsRoot", "RuntimeRoot"),
    }


def install_parameters(config: Settings, state: State) -> dict[str, str]:
    plan = _plan(state)
    return {
        "RuntimeBundleUri": config.runtime_bundle_uri,
        "ModelName": plan["deploy_model"],
        "ModelPath": plan["model_path"],
        "Port": str(plan["port"]),
        "Quantization": plan["quantization"],
        "Dtype": str(plan.get("dtype") or "auto"),
        "ContextTokens": str(plan.get("context_tokens") or 4096),
        "BasePython": config.base_python,
        **_roots(config, "RuntimeRoot", "UnitDir", "EnvDir", "ProfileDir"),
        "ServiceUnit": RUNTIME_UNIT,
        "ServiceUser": config.service_user,
    }


def health_parameters(config: Settings, state: State) -> dict[str, str]:
    return {"Port": str(_plan(state)["port"])}


def rollback_parameters(config: Settings, state: State) -> dict[str, str]:
    # Flux is restarted from what snapshot-previous recorded, so no Flux unit here.
    return {
        **_roots(config, "StateDir", "RuntimeRoot", "UnitDir", "EnvDir", "ProfileDir"),
        "ServiceUnit": RUNTIME_UNIT,
    }


def validate_parameters(config: Settings, state: State) -> dict[str, str]:
    return {
        "S3Uri": f"s3://{config.model_bucket}/{config.model_prefix}",
        "Port": str(config.coexist_port),
        "BasePython": config.base_python,
        **_roots(config, "ModelsRoot", "RuntimeRoot", "EnvDir"),
        **_units(config),
    }


def sync_expectation(config: Settings, state: State) -> dict[str, Any]:
    """The model folder as the plan saw it: a sync that finds anything else is stale."""
    plan = _plan(state)
    prefix = plan["source_uri"].split("/", 3)[3]
    keys = [f for f in plan.get("files", []) if str(f.get("key", "")).startswith(prefix)]
    skipped = [k for k in plan.get("skipped_files", []) if str(k).startswith(prefix)]
    return {
        "files": len(keys) + len(skipped),
        "bytes": sum(int(f["bytes"]) for f in keys) + (int(plan.get("skipped_bytes") or 0) if skipped else 0),
    }


def check_sync(result: dict[str, Any], expect: dict[str, Any]) -> None:
    synced_files, synced_bytes = int(result.get("files_total", -1)), int(result.get("total_bytes", -1))
    if (synced_files, synced_bytes) != (expect["files"], expect["bytes"]):
        raise SyncFailed(
            f"the model folder changed in S3 after it was planned: planned {expect['files']} files, "
            f"{expect['bytes']} bytes; synced {synced_files} files, {synced_bytes} bytes"
        )


def health_budget(config: Settings, state: State) -> int:
    """Loading takes longer for bigger models: base + per GB of weights."""
    plan = state.get("plan") or {}
    gigabytes = float(plan.get("total_bytes") or 0) / GB
    return int(config.step_budgets.health_base + config.step_budgets.health_per_gb * gigabytes)


@dataclass(frozen=True)
class StepSpec:
    key: str  # where the outcome lands: $.steps.<key>
    document: str  # ssm_documents/<document>.yaml
    error: type[DeployError]
    parameters: Callable[[Settings, State], dict[str, str]]
    budget: Callable[[Settings, State], int]
    # The health check runs its document again while the runtime is still loading.
    resend_while: tuple[str, ...] = ()
    # Refuse at once when SSM says the agent is not online (the scheduled validation).
    require_online: bool = False
    # What a successful result must show, computed at send time and checked at the end.
    expect: Callable[[Settings, State], dict[str, Any]] | None = None
    check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None


STEPS: dict[str, StepSpec] = {
    spec.key: spec
    for spec in (
        StepSpec(
            "collect",
            "collect-resources",
            CommandFailed,
            collect_parameters,
            lambda c, s: c.step_budgets.collect,
        ),
        StepSpec(
            "previous",
            "snapshot-previous",
            CommandFailed,
            snapshot_parameters,
            lambda c, s: c.step_budgets.collect,
        ),
        StepSpec("stop", "stop-service", StopFailed, stop_parameters, lambda c, s: c.step_budgets.stop),
        StepSpec(
            "sync",
            "sync-model",
            SyncFailed,
            sync_parameters,
            lambda c, s: c.step_budgets.sync,
            expect=sync_expectation,
            check=check_sync,
        ),
        StepSpec(
            "install",
            "install-runtime",
            InstallFailed,
            install_parameters,
            lambda c, s: c.step_budgets.install,
        ),
        StepSpec(
            "health",
            "health-check",
            HealthCheckFailed,
            health_parameters,
            health_budget,
            resend_while=("loading", "down"),
        ),
        StepSpec(
            "rollback", "rollback", CommandFailed, rollback_parameters, lambda c, s: c.step_budgets.rollback
        ),
        StepSpec(
            "validation",
            "validate",
            ValidationFailed,
            validate_parameters,
            lambda c, s: c.step_budgets.validation,
            require_online=True,
        ),
    )
}
