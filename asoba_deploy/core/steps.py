"""The step registry: every step of the deployment, once, under one name.

A step's name (kebab-case, e.g. `stop-flux`) is the only spelling written down; every other
one is derived from it:

| spelling            | rule                   | stop-flux                         |
|---------------------|------------------------|-----------------------------------|
| state label         | PascalCase             | StopFlux                          |
| Lambda function id  | the label              | StopFlux                          |
| handler file        | lambdas/handlers/<key> | lambdas/handlers/stop_flux.py     |
| SSM document        | ssm_documents/<name>   | ssm_documents/stop-flux.yaml      |
| result key          | snake_case             | $.steps.stop_flux                 |
| typed error         | <label>Failed          | StopFluxFailed                    |
| CLI progress line   | the name               | stop-flux                         |
| test file           | test_<key>.py          | tests/documents/test_stop_flux.py |

The stack (functions, documents, IAM), the state machine (its phases, in registry order),
the handlers' dispatch and the CLI's progress read this registry instead of repeating it.

Instance-step parameters are built from the state the machine carries (the request, the
plan, the snapshot). Every value was validated before it got here, and the document's own
allowedPattern checks it again on the SSM side.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from asoba_deploy.core import errors
from asoba_deploy.core.benchmark import benchmark_parameters
from asoba_deploy.core.config import RUNTIME_UNIT
from asoba_deploy.core.errors import CommandFailed, DeployError, SyncFailed
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.requirement_sets import requirement_packages
from asoba_deploy.core.residents import unit_roots
from asoba_deploy.core.settings import Settings
from asoba_deploy.core.state import ExecutionState

GB = 1024**3
Parameters = Callable[[Settings, ExecutionState], dict[str, str]]


def _plan(state: ExecutionState) -> Plan:
    if state.plan is None:
        raise CommandFailed("this step needs the plan in $.plan")
    return state.plan


# Document parameter -> where that root lives on the instance (config.InstanceRoots).
# The documents' aws:downloadContent steps (InstanceStep.fetches).
BRING_S5CMD = "bringS5cmd"
FETCH_RUNTIME_BUNDLE = "fetchRuntimeBundle"

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


def _service_unit(config: Settings, unit: str) -> dict[str, str]:
    """ServiceUnit and the folders of that unit's own files (core.residents): the primary's are
    the roots themselves, a resident model's <EnvDir>/models/<model> and <StateDir>/models/<model>."""
    roots = unit_roots(config.instance_roots, unit)
    return {"ServiceUnit": unit, "EnvDir": roots.env_dir, "StateDir": roots.state_dir}


def _plan_unit(state: ExecutionState) -> str:
    """The runtime unit the plan deploys into (older plans: the primary's)."""
    return _plan(state).unit if state.plan is not None and state.plan.unit else RUNTIME_UNIT


def collect_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    return {
        **_roots(config, "ModelsRoot", "RuntimeRoot", "EnvDir"),
        # the candidate roots the plan chooses among, each measured (device, free, write rate)
        "ModelsRoots": ":".join(config.deploy.candidate_models_roots),
        # the requirement sets' packages: which of them the runtime's Python has already
        "Packages": " ".join(requirement_packages()),
        # probed for the engines it can import while the runtime venv does not exist yet
        "BasePython": config.deploy.base_python,
        # every resident model's unit file there is reported beside the primary's
        **_roots(config, "UnitDir"),
        **_units(config),
    }


def snapshot_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    return {
        **_roots(config, "RuntimeRoot", "UnitDir", "ProfileDir"),
        "FluxUnit": config.flux_service,
        **_service_unit(config, _plan_unit(state)),
    }


def stop_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    units = _plan(state).stop_services or [config.flux_service]
    return {"Unit": str(units[0]), "WaitSeconds": str(max(10, config.step_budgets.stop_flux - 30))}


def evict_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    """The resident units the plan evicts (`evict: lru`, or the old unit of a stop-start behind
    the router), the least recently used first, stopped once this execution's sync is complete."""
    units = _plan(state).evict_units
    if not units:
        raise CommandFailed("evict runs only when the plan names units to evict ($.plan.evict_units)")
    marker = _sync_marker(state, "evict")
    return {
        "Units": " ".join(units),
        "WaitSeconds": str(max(10, config.step_budgets.evict - 30)),
        **marker,
        # the marker may take as long as the sync may (the document ignores it when not waiting)
        "SyncWaitSeconds": str(config.step_budgets.sync if marker["WaitForSync"] == "true" else 1),
    }


def sync_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    plan = _plan(state)
    base: dict[str, str] = {}
    if plan.base_model and plan.base_source_uri:
        # An adapter: its base folder is synced by the same command, before the adapter.
        base = {
            "BaseModelName": plan.base_model,
            "BaseSourceUri": plan.base_source_uri,
            "BaseExpectFiles": str(plan.base_source_files),
            "BaseExpectBytes": str(plan.base_source_bytes),
        }
    return {
        "ModelName": plan.deploy_model,
        "SourceUri": plan.source_uri,
        # what the plan counted there: a folder changed since fails before any byte moves and
        # leaves no marker for start-service and evict (check_sync checks the result too)
        "ExpectFiles": str(plan.source_files),
        "ExpectBytes": str(plan.source_bytes),
        **base,
        **_roots(config, "RuntimeRoot"),
        "ModelsRoot": _models_root(config, plan),
        "S5cmdUri": config.stack.s5cmd_uri,
        # written last into the model folder's completion marker (start-service waits for it)
        "ExecutionName": sync_marker_token(state),
    }


def _models_root(config: Settings, plan: Plan) -> str:
    """The root the plan chose among the candidates (plan.models_root; model_path lies in it)."""
    return plan.models_root or str(config.instance_roots.models_root)


def install_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    plan = _plan(state)
    return {
        "RuntimeBundleUri": config.stack.runtime_bundle_uri,
        "ModelName": plan.deploy_model,
        "ModelPath": plan.model_path,
        "Port": str(plan.port),
        "Quantization": str(plan.quantization),
        "Dtype": str(plan.dtype or "auto"),
        "ContextTokens": str(plan.max_model_len or plan.context_tokens or 4096),
        **_engine_parameters(config, plan),
        **({"BaseModelPath": plan.base_model_path} if plan.base_model_path else {}),
        # an adapter joining the process that serves its base: only that unit's ADAPTERS change
        **({"KeepEnv": "true", "Adapters": plan.joins.adapters} if plan.joins is not None else {}),
        **_load_parameters(plan),
        "BasePython": config.deploy.base_python,
        **_roots(config, "RuntimeRoot", "UnitDir", "ProfileDir"),
        **_without_state_dir(_service_unit(config, plan.unit)),
        "ServiceUser": config.deploy.service_user,
    }


def _without_state_dir(parameters: dict[str, str]) -> dict[str, str]:
    """For the documents that keep no record (install, start-service)."""
    return {name: value for name, value in parameters.items() if name != "StateDir"}


def _load_parameters(plan: Plan) -> dict[str, str]:
    """Where the runtime loads the weights from (core.loading): LOAD_FROM, and MODEL_SOURCE_URI
    (the model's S3 folder) when it streams them."""
    streams = str(getattr(plan, "load_from", None) or "disk") == "stream"
    return {"LoadFrom": "stream" if streams else "disk", "ModelSourceUri": plan.source_uri if streams else ""}


def _engine_parameters(config: Settings, plan: Plan) -> dict[str, str]:
    """The serving engine and the sizes it obeys (install's Engine, MaxBatchSize, QueueSize and,
    with vLLM, GpuMemoryUtilization: the plan's GPU budget as a share of total GPU memory)."""
    parameters = {
        "Engine": plan.engine,
        "MaxBatchSize": str(plan.max_num_seqs),
        "QueueSize": str(config.deploy.serving.queue_size),
    }
    if plan.gpu_memory_utilization is not None:
        parameters["GpuMemoryUtilization"] = f"{plan.gpu_memory_utilization:.3f}"
    return parameters


# The sync's completion marker, <model folder>/SYNC_MARKER, holds the execution's name (or, for a
# name outside the documents' pattern, a digest of it): a marker of another execution is stale.
SYNC_MARKER = ".asoba-synced"
_SAFE_EXECUTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,79}$")
# start-service's wait for the marker ends this long before its step budget: restart and report
START_MARGIN_SECONDS = 30


def sync_marker_token(state: ExecutionState) -> str:
    """What this execution's sync writes into the marker: its name when the documents' pattern
    takes it (Step Functions allows more characters than a shell-safe parameter), else a digest."""
    name = state.execution_name or ""
    if not name or _SAFE_EXECUTION_NAME.fullmatch(name):
        return name
    return "sha256-" + hashlib.sha256(name.encode()).hexdigest()[:40]


def waits_for_sync(plan: Plan) -> bool:
    """A runtime that streams the weights from S3 starts at once (the disk copy completes beside
    it); one that loads from the disk waits for the sync's marker."""
    return plan.load_from != "stream"


def _after_the_sync(own: str) -> Callable[[Settings, ExecutionState], int]:
    """The budget of a step that runs beside the sync and waits for its marker (start-service,
    evict): as long as the sync may, then its own budget `own`; streaming, its own alone."""

    def budget(config: Settings, state: ExecutionState) -> int:
        budgets = config.step_budgets
        return int(getattr(budgets, own) + (budgets.sync if waits_for_sync(_plan(state)) else 0))

    return budget


start_service_budget = _after_the_sync("start_service")
evict_budget = _after_the_sync("evict")


def _sync_marker(state: ExecutionState, step: str) -> dict[str, str]:
    """ModelPath, WaitForSync and ExecutionName: the marker of this execution's sync that `step`
    waits for before it acts (not when the runtime streams the weights)."""
    plan = _plan(state)
    wait = waits_for_sync(plan)
    token = sync_marker_token(state)
    if wait and not token:
        raise CommandFailed(f"{step} needs the execution's name to find this sync's marker")
    return {"ModelPath": plan.model_path, "WaitForSync": "true" if wait else "false", "ExecutionName": token}


def start_service_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    budget = start_service_budget(config, state)
    return {
        "ServiceUnit": _plan(state).unit,
        **_sync_marker(state, "start-service"),
        "WaitSeconds": str(max(1, budget - START_MARGIN_SECONDS)),
    }


# The switch's waits for the router (start, reload) and the drain, within its step budget.
ROUTER_WAIT_SECONDS = 30
SWITCH_MARGIN_SECONDS = 90


def switch_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    """The router's stable port pointed at the plan's unit; the old unit drained, then stopped."""
    plan = _plan(state)
    switch = plan.switch
    if switch is None:
        raise CommandFailed("switch runs only when the plan moves the stable endpoint ($.plan.switch)")
    drain = max(1, config.step_budgets.switch - ROUTER_WAIT_SECONDS - SWITCH_MARGIN_SECONDS)
    old = (
        {"OldUnit": switch.old_unit, "OldPort": str(switch.old_port)}
        if switch.old_unit and switch.old_port
        else {}
    )
    return {
        "StablePort": str(switch.stable_port),
        "BackendPort": str(plan.port),
        "BackendModel": plan.deploy_model,
        "BackendUnit": plan.unit,
        **old,
        "DrainSeconds": str(drain),
        "RouterWaitSeconds": str(ROUTER_WAIT_SECONDS),
        # the router's files are the primary's (its env and state folders), whoever it fronts
        **_roots(config, "RuntimeRoot", "UnitDir", "EnvDir", "ProfileDir", "StateDir"),
        "ServiceUser": config.deploy.service_user,
    }


def health_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    return {"Port": str(_plan(state).port)}


def rollback_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    # Flux is restarted from what snapshot-previous recorded, so no Flux unit here; the units the
    # evict step stopped are started again (they are not in the record as stopped by us).
    plan = state.plan
    restart = list(plan.evict_units) if plan is not None else []
    switch = plan.switch if plan is not None else None
    if switch is not None and switch.old_unit and switch.old_unit not in restart:
        restart.append(switch.old_unit)  # the switch stops it once the new one serves
    return {
        **_roots(config, "RuntimeRoot", "UnitDir", "ProfileDir"),
        **_service_unit(config, _plan_unit(state)),
        **({"RestartUnits": " ".join(restart)} if restart else {}),
        # undo the switch from its record first, when the plan has one (the document reads
        # <StateDir>/switch above a resident's own folder)
        **({"RouterRestore": "true"} if switch is not None else {}),
    }


def check_instance_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    return {
        "S3Uri": f"s3://{config.model_bucket}/{config.model_prefix}",
        "S5cmdUri": config.stack.s5cmd_uri,
        "Port": str(config.coexist_port),
        "BasePython": config.deploy.base_python,
        # every resident model's unit there is checked beside the primary's
        **_roots(config, "ModelsRoot", "RuntimeRoot", "EnvDir", "UnitDir"),
        **_units(config),
    }


def undeploy_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    """`state.restore_flux`: start Flux again afterwards; `state.undeploy_unit`: which runtime
    unit goes (the primary's when absent)."""
    return {
        **_roots(config, "RuntimeRoot", "UnitDir", "ProfileDir"),
        **_service_unit(config, state.undeploy_unit or RUNTIME_UNIT),
        "FluxUnit": config.flux_service,
        "StartFlux": "true" if state.restore_flux else "false",
    }


def sync_expectation(config: Settings, state: ExecutionState) -> dict[str, Any]:
    """The model folder as the plan saw it: a sync that finds anything else is stale. Counted at
    plan time: the state's plan lists only the first files."""
    plan = _plan(state)
    expect: dict[str, Any] = {"files": plan.source_files, "bytes": plan.source_bytes}
    if plan.base_model:
        expect["base"] = {"files": plan.base_source_files, "bytes": plan.base_source_bytes}
    return expect


def _check_folder(what: str, result: Any, expect: dict[str, Any]) -> None:
    result = result if isinstance(result, dict) else {}
    synced_files, synced_bytes = int(result.get("files_total", -1)), int(result.get("total_bytes", -1))
    if (synced_files, synced_bytes) != (expect["files"], expect["bytes"]):
        raise SyncFailed(
            f"the {what} changed in S3 after it was planned: planned {expect['files']} files, "
            f"{expect['bytes']} bytes; synced {synced_files} files, {synced_bytes} bytes"
        )


def check_sync(result: dict[str, Any], expect: dict[str, Any]) -> None:
    """The synced folders are the ones planned: the model's (the result's top level) and, for an
    adapter, its base's (`result["base"]`)."""
    _check_folder("model folder", result, expect)
    if expect.get("base") is not None:
        _check_folder("base model folder", result.get("base"), expect["base"])


def health_budget(config: Settings, state: ExecutionState) -> int:
    """Loading takes longer for bigger models: base + per GB of weights."""
    gigabytes = float(state.plan.total_bytes if state.plan else 0) / GB
    budgets = config.step_budgets
    return int(budgets.health_check + budgets.health_check_per_gb * gigabytes)


class Phase(StrEnum):
    """Where a step sits in the state machine; steps of a phase run in registry order."""

    INPUT = "input"  # the first state: parse and check the execution input
    CHECK = "check"  # the scheduled instance check (mode "validate")
    LOCK = "lock"  # around a deployment
    WAKE = "wake"  # after the lock: a stopped instance started and awaited (stacks/wake_instance.py)
    INSPECT = "inspect"  # read the instance, before the plan
    PLAN = "plan"  # the dry run
    BACKUP = "backup"  # once the plan fits: record what runs now
    CHANGE = "change"  # change the instance; any failure here is rolled back
    UNDO = "undo"  # the rollback
    MEASURE = "measure"  # after the change succeeded, outside its rollback: the benchmark
    RECORD = "record"  # the ledger
    ROLLOUT = "rollout"  # around each instance of a fleet rollout (core/rollout.py)
    ON_DEMAND = "on-demand"  # sent by the deploy-model CLI only (no function)


class Grant(StrEnum):
    """What a step's function may touch, besides its own document (granted by the stack)."""

    READ_MODELS = "read-models"  # s3:GetObject under the prefix, s3:ListBucket on it
    SEE_INSTANCES = "see-instances"  # ec2:DescribeInstances, ssm:DescribeInstanceInformation
    LOCK_TABLE = "lock-table"
    LEDGER_TABLE = "ledger-table"
    DESCRIBE_EXECUTIONS = "describe-executions"  # is the lock's holder still running?
    ACTIVITY_TABLE = "activity-table"  # the runtime's request counters per instance (core/idle.py)
    STOP_INSTANCES = "stop-instances"  # ec2:StopInstances on the stack's instances (the idle policy)
    START_INSTANCES = "start-instances"  # ec2:StartInstances on the stack's instances


@dataclass(frozen=True)
class InstanceStep:
    """How a step acts on the instance: its document's parameters and its budget."""

    parameters: Parameters
    budget: Callable[[Settings, ExecutionState], int]
    # The health check runs its document again while the runtime is still loading.
    resend_while: tuple[str, ...] = ()
    # Refuse at once when SSM says the agent is not online (the scheduled check).
    require_online: bool = False
    # What a successful result must show, computed at send time and checked at the end.
    expect: Callable[[Settings, ExecutionState], dict[str, Any]] | None = None
    check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
    # The document's aws:downloadContent steps before its script, in order: what a fresh image
    # lacks (s5cmd, the runtime bundle), fetched by the agent with the instance's own role.
    fetches: tuple[str, ...] = ()
    # Cancel this execution's commands still running on the instance before sending (the
    # rollback: a parallel branch beside the one that failed would go on writing after it).
    stops_in_flight: bool = False


@dataclass(frozen=True)
class Step:
    name: str  # the one spelling: kebab-case
    phase: Phase
    description: str  # the function's description and the state's comment
    error: type[DeployError]  # raised when the step fails (an instance step's is <Label>Failed)
    instance: InstanceStep | None = None  # None: the step is a Lambda of its own, no document
    grants: frozenset[Grant] = frozenset()
    # Run only when this JSONPath is present in the state (a Choice "<Label>?" before it).
    run_if: str | None = None
    # Consecutive steps naming the same group run at once as the branches of one Parallel state
    # labelled for the group ("prepare" -> Prepare); the next step starts when all have ended.
    parallel: str | None = None
    # Within a group, the steps naming the same branch run one after the other in that branch
    # (registry order); a step naming none is a branch of its own.
    branch: str | None = None
    timeout_seconds: int = 30
    memory_mb: int = 256

    @property
    def label(self) -> str:
        return label_of(self.name)

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def function_id(self) -> str:
        return self.label

    @property
    def branch_name(self) -> str:
        return self.branch or self.name

    @property
    def plugin(self) -> str:
        """The name of the document's script step (its PluginName in GetCommandInvocation)."""
        first, *rest = self.name.split("-")
        return first + "".join(part.capitalize() for part in rest)

    @property
    def plugins(self) -> tuple[str, ...]:
        """Every step of the document, in order: the fetches, then the script."""
        return (*self.instance.fetches, self.plugin) if self.instance is not None else ()

    @property
    def handler(self) -> str:
        return f"handlers.{self.key}.handler"

    @property
    def document(self) -> str | None:
        return self.name if self.instance is not None else None

    @property
    def has_function(self) -> bool:
        return self.phase is not Phase.ON_DEMAND

    @property
    def result_path(self) -> str:
        return f"$.steps.{self.key}"


def label_of(name: str) -> str:
    """A kebab-case name's PascalCase state label (a step's, or a parallel group's)."""
    return "".join(part.capitalize() for part in name.split("-"))


def _budget(name: str) -> Callable[[Settings, ExecutionState], int]:
    return lambda config, state: int(getattr(config.step_budgets, name))


def _registry(*steps: Step) -> dict[str, Step]:
    registry: dict[str, Step] = {}
    for step in steps:
        if step.name in registry:
            raise ValueError(f"step {step.name!r} is registered twice")
        if step.instance is not None and step.error.__name__ != f"{step.label}Failed":
            raise ValueError(f"step {step.name!r}: its error must be {step.label}Failed")
        registry[step.name] = step
    return registry


_SEE_INSTANCES = frozenset({Grant.SEE_INSTANCES})
# The change phase's parallel group: the model's bytes in one branch; in the other the runtime:
# installed, started (on the instance it waits for the sync's marker unless it streams the
# weights from S3) and awaited healthy. A streamed load so overlaps the whole sync.
PREPARE = "prepare"
RUNTIME_BRANCH = "runtime"

STEPS: dict[str, Step] = _registry(
    Step(
        "validate-input",
        Phase.INPUT,
        "Parse the input; check model and instance",
        errors.InvalidInput,
        grants=frozenset({Grant.READ_MODELS, Grant.SEE_INSTANCES}),
    ),
    Step(
        "check-instance",
        Phase.CHECK,
        "Scheduled check of the instance: S3, agent, resources, services, runtime",
        errors.CheckInstanceFailed,
        InstanceStep(
            check_instance_parameters,
            _budget("check_instance"),
            require_online=True,
            fetches=(BRING_S5CMD,),
        ),
        # the idle policy: the activity item, the stop under the deployment lock, its ledger record
        grants=frozenset(
            {
                Grant.READ_MODELS,
                Grant.SEE_INSTANCES,
                Grant.ACTIVITY_TABLE,
                Grant.STOP_INSTANCES,
                Grant.LOCK_TABLE,
                Grant.DESCRIBE_EXECUTIONS,
                Grant.LEDGER_TABLE,
            }
        ),
    ),
    Step(
        "lock",
        Phase.LOCK,
        "Acquire or release the per-instance lock",
        errors.DeploymentInProgress,
        grants=frozenset({Grant.LOCK_TABLE, Grant.DESCRIBE_EXECUTIONS}),
    ),
    Step(
        "wake-instance",
        Phase.WAKE,
        "Start a stopped instance; report when it runs and its SSM agent is Online",
        errors.InstanceUnavailable,
        grants=frozenset({Grant.SEE_INSTANCES, Grant.START_INSTANCES}),
    ),
    Step(
        "collect-resources",
        Phase.INSPECT,
        "Snapshot RAM, GPU, services, disk, cache",
        errors.CollectResourcesFailed,
        InstanceStep(collect_parameters, _budget("collect_resources")),
        grants=_SEE_INSTANCES,
    ),
    Step(
        "plan",
        Phase.PLAN,
        "Plan the deployment (the dry run)",
        errors.InsufficientResources,
        grants=frozenset({Grant.READ_MODELS}),
        timeout_seconds=60,
        memory_mb=512,
    ),
    Step(
        "snapshot-previous",
        Phase.BACKUP,
        "Record what runs now; back up unit and env",
        errors.SnapshotPreviousFailed,
        InstanceStep(snapshot_parameters, _budget("snapshot_previous")),
        grants=_SEE_INSTANCES,
    ),
    Step(
        "stop-flux",
        Phase.CHANGE,
        "Stop Flux and wait until its GPU memory is free",
        errors.StopFluxFailed,
        InstanceStep(stop_parameters, _budget("stop_flux")),
        grants=_SEE_INSTANCES,
        run_if="$.plan.stop_services[0]",
    ),
    # The install (venv, packages, env, unit) needs none of the model's bytes: it runs while the
    # model syncs; start-service then starts the unit once the sync's marker is there (at once
    # when the runtime streams the weights), and the health check waits for it, still beside the sync.
    Step(
        "sync",
        Phase.CHANGE,
        "Sync the model folder from S3 (s5cmd)",
        errors.SyncFailed,
        InstanceStep(
            sync_parameters,
            _budget("sync"),
            expect=sync_expectation,
            check=check_sync,
            fetches=(BRING_S5CMD,),
        ),
        grants=_SEE_INSTANCES,
        parallel=PREPARE,
    ),
    Step(
        "install",
        Phase.CHANGE,
        "Install the runtime, write env and unit (not started)",
        errors.InstallFailed,
        InstanceStep(install_parameters, _budget("install"), fetches=(FETCH_RUNTIME_BUNDLE,)),
        grants=_SEE_INSTANCES,
        parallel=PREPARE,
        branch=RUNTIME_BRANCH,
    ),
    # Last before the start: the models it stops serve on while the new one syncs (it waits for
    # the sync's marker too, unless the runtime streams the weights).
    Step(
        "evict",
        Phase.CHANGE,
        "Once the sync is complete, stop the resident models the plan evicts (LRU; or the old one of a "
        "stop-start behind the router)",
        errors.EvictFailed,
        InstanceStep(evict_parameters, evict_budget),
        grants=_SEE_INSTANCES,
        run_if="$.plan.evict_units[0]",
        parallel=PREPARE,
        branch=RUNTIME_BRANCH,
    ),
    Step(
        "start-service",
        Phase.CHANGE,
        "Start the unit once this execution's sync is complete (at once when streaming)",
        errors.StartServiceFailed,
        InstanceStep(start_service_parameters, start_service_budget),
        grants=_SEE_INSTANCES,
        parallel=PREPARE,
        branch=RUNTIME_BRANCH,
    ),
    Step(
        "health-check",
        Phase.CHANGE,
        "Wait until /status and /health say healthy",
        errors.HealthCheckFailed,
        InstanceStep(health_parameters, health_budget, resend_while=("loading", "down")),
        grants=_SEE_INSTANCES,
        parallel=PREPARE,
        branch=RUNTIME_BRANCH,
    ),
    # Blue-green: once the new unit is healthy (and stop-start behind the router), the router's
    # stable port moves to it and the old unit drains and stops; still inside the rollback's reach.
    Step(
        "switch",
        Phase.CHANGE,
        "Point the stable endpoint's router at the new unit; drain and stop the old one",
        errors.SwitchFailed,
        InstanceStep(switch_parameters, _budget("switch")),
        grants=_SEE_INSTANCES,
        run_if="$.plan.switch.stable_port",
    ),
    # After ChangeInstance, with its own Catch: a failed benchmark is recorded, never rolled back.
    Step(
        "benchmark",
        Phase.MEASURE,
        "Measure the healthy model: time to first token, tokens/s at 1 and N, load, GPU memory",
        errors.BenchmarkFailed,
        InstanceStep(benchmark_parameters, _budget("benchmark")),
        grants=_SEE_INSTANCES,
    ),
    Step(
        "rollback",
        Phase.UNDO,
        "Restore the previous service and restart Flux",
        errors.RollbackFailed,
        InstanceStep(rollback_parameters, _budget("rollback"), stops_in_flight=True),
        grants=_SEE_INSTANCES,
    ),
    Step(
        "record",
        Phase.RECORD,
        "Record the execution in the ledger",
        errors.RecordFailed,
        grants=frozenset({Grant.LEDGER_TABLE}),
    ),
    Step(
        "rollout",
        Phase.ROLLOUT,
        "Admit, count and summarize the instances of a fleet rollout",
        errors.RolloutFailed,
        # the failure counter is an item of the lock table; a failed row reads the ledger's record
        grants=frozenset({Grant.LOCK_TABLE, Grant.LEDGER_TABLE}),
    ),
    Step(
        "undeploy",
        Phase.ON_DEMAND,
        "Stop and remove the deployed runtime (deploy-model undeploy)",
        errors.UndeployFailed,
        InstanceStep(undeploy_parameters, _budget("rollback")),
    ),
)


def phase(which: Phase) -> list[Step]:
    """The steps of one phase, in registry order."""
    return [step for step in STEPS.values() if step.phase is which]


def the(which: Phase) -> Step:
    """The one step of a phase that has exactly one (INPUT, LOCK, PLAN, UNDO, RECORD, CHECK)."""
    found = phase(which)
    if len(found) != 1:
        raise LookupError(f"phase {which} has {len(found)} steps, not one")
    return found[0]


def instance_steps() -> list[Step]:
    return [step for step in STEPS.values() if step.instance is not None]


def by_key(key: str) -> Step:
    for step in STEPS.values():
        if step.key == key:
            return step
    raise KeyError(key)
