"""What each deploy-model command does, against the stack's state machine, tables and documents."""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from asoba_deploy.cli import power as instance_power
from asoba_deploy.cli.follow import CommandOutput, Finished, Progress, follow
from asoba_deploy.cli.render import (
    InstanceStatus,
    Term,
    checks_table,
    error_line,
    history_table,
    human_seconds,
    plan_table,
    record_summary,
    status_table,
)
from asoba_deploy.cli.stack import Aws, CliError, StackInfo
from asoba_deploy.core import commands as ssm_commands
from asoba_deploy.core import steps as registry
from asoba_deploy.core.config import RUNTIME_UNIT
from asoba_deploy.core.contracts import DeployRequest, parse_request
from asoba_deploy.core.errors import DeployError, InvalidInput
from asoba_deploy.core.ledger import (
    LedgerRecord,
    Resident,
    all_records,
    current_deployment,
    put,
    recent,
    resident_models,
    undeploy_record,
    utcnow,
)
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.settings import Settings
from asoba_deploy.core.state import ExecutionState

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Context:
    """What every command works with: AWS clients, the stack, and where to write."""

    aws: Aws
    stack_name: str
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    json_output: bool = False
    poll_seconds: float = 1.0
    timeout: float | None = None
    sleep: Callable[[float], None] = time.sleep
    _stack: StackInfo | None = None

    @property
    def stack(self) -> StackInfo:
        if self._stack is None:
            self._stack = StackInfo.load(self.aws, self.stack_name)
        return self._stack

    @property
    def human(self) -> TextIO:
        """Where human text goes: stdout, or stderr when stdout carries JSON."""
        return self.err if self.json_output else self.out

    @property
    def term(self) -> Term:
        return Term.for_stream(self.human)

    def progress(self) -> Progress:
        """Step lines, on the human stream (live on a terminal)."""
        return Progress(self.human, self.term)

    def say(self, text: str = "") -> None:
        self.human.write(text + "\n")
        self.human.flush()


# ------------------------------------------------------------------------------- executions


def execution_name(kind: str, model: str | None, now: datetime | None = None) -> str:
    """`<kind>-<model>-<UTC time>-<4 hex>`: at most 80 characters of [A-Za-z0-9_-]."""
    moment = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    label = re.sub(r"[^A-Za-z0-9_-]", "-", model or "")[:40]
    parts = [kind, label, moment, secrets.token_hex(2)]
    return "-".join(p for p in parts if p)[:80]


def build_request(
    model: str,
    *,
    dry_run: bool = False,
    force_quantize: bool = False,
    allow_stop_flux: bool = True,
    port: int | None = None,
    context_tokens: int | None = None,
    instance_id: str | None = None,
    benchmark: bool = True,
    load_from: str | None = None,
    keep_others: bool = False,
    evict: str | None = None,
    strategy: str | None = None,
) -> dict[str, Any]:
    """The execution input with only what the user chose (the machine applies its defaults),
    checked against the contract before anything is started (InvalidInput otherwise).
    `keep_others`: `"resident": "keep"` (the models served stay, the new one beside them);
    `evict`: `"evict": "lru"` (only with keep_others, as the contract says); `strategy`: how the
    stable endpoint moves (auto, stop-start, blue-green: --zero-downtime)."""
    payload: dict[str, Any] = {"model": model}
    if dry_run:
        payload["dry_run"] = True
    if force_quantize:
        payload["force_quantize"] = True
    if not allow_stop_flux:
        payload["allow_stop_flux"] = False
    if port is not None:
        payload["port"] = port
    if context_tokens is not None:
        payload["context_tokens"] = context_tokens
    if instance_id:
        payload["instance_id"] = instance_id
    if not benchmark:
        payload["benchmark"] = False
    if load_from is not None:
        payload["load_from"] = load_from
    if keep_others:
        payload["resident"] = "keep"
    if evict is not None:
        payload["evict"] = evict
    if strategy is not None:
        payload["strategy"] = strategy
    parse_request(payload)
    return payload


def console_url(region: str, arn: str) -> str:
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{arn}"


def start(ctx: Context, payload: dict[str, Any], name: str) -> str:
    arn = str(
        ctx.aws.client("stepfunctions").start_execution(
            stateMachineArn=ctx.stack.state_machine_arn, name=name, input=json.dumps(payload)
        )["executionArn"]
    )
    ctx.say(f"execution {name} started on {ctx.stack.state_machine_arn.rsplit(':', 1)[-1]}")
    if not ctx.aws.is_local:
        ctx.say(f"  console: {console_url(ctx.aws.region, arn)}")
    return arn


def run_and_follow(
    ctx: Context, payload: dict[str, Any], name: str, follow_it: bool = True
) -> Finished | None:
    arn = start(ctx, payload, name)
    if not follow_it:
        ctx.say(f"not following; see it with: aws stepfunctions describe-execution --execution-arn {arn}")
        if ctx.json_output:
            ctx.out.write(json.dumps({"executionArn": arn}) + "\n")
        return None
    progress = ctx.progress()
    # the sync's (and the load's) progress lines, from the command-output log group
    group = ctx.stack.command_log_group
    output = CommandOutput(ctx.aws.client("logs"), group) if group else None
    try:
        return follow(
            ctx.aws.client("stepfunctions"),
            arn,
            progress,
            poll_seconds=ctx.poll_seconds,
            timeout=ctx.timeout,
            sleep=ctx.sleep,
            output=output,
        )
    except KeyboardInterrupt:
        ctx.err.write(
            f"\ninterrupted: the execution goes on without this terminal: {arn}\n"
            f"  aws stepfunctions describe-execution --execution-arn {arn}\n"
        )
        raise


def report_failure(ctx: Context, finished: Finished) -> int:
    ctx.err.write(error_line(finished.error or finished.status, finished.cause) + "\n")
    if finished.error == InvalidInput.__name__:
        return EXIT_USAGE
    return EXIT_FAILED


def deploy(
    ctx: Context,
    model: str,
    *,
    dry_run: bool,
    force_quantize: bool,
    allow_stop_flux: bool,
    port: int | None,
    context_tokens: int | None,
    instance_id: str | None,
    follow_it: bool,
    benchmark: bool = True,
    load_from: str | None = None,
    keep_others: bool = False,
    evict: str | None = None,
    strategy: str | None = None,
) -> int:
    payload = build_request(
        model,
        dry_run=dry_run,
        force_quantize=force_quantize,
        allow_stop_flux=allow_stop_flux,
        port=port,
        context_tokens=context_tokens,
        instance_id=instance_id,
        benchmark=benchmark,
        load_from=load_from,
        keep_others=keep_others,
        evict=evict,
        strategy=strategy,
    )
    if instance_id:
        ctx.stack.choose_instance(instance_id)
    finished = run_and_follow(ctx, payload, execution_name("dry" if dry_run else "deploy", model), follow_it)
    if finished is None:
        return EXIT_OK
    if finished.status != "SUCCEEDED":
        return report_failure(ctx, finished)
    if ctx.json_output:
        ctx.out.write(json.dumps(finished.output, indent=2, sort_keys=True) + "\n")
    elif dry_run:
        ctx.say()
        ctx.say(plan_table(Plan.model_validate(finished.output), ctx.term))
    else:
        ctx.say()
        ctx.say(record_summary(LedgerRecord.model_validate(finished.output), ctx.term))
    ctx.say(f"\n{'dry run' if dry_run else 'deploy'} wall time: {human_seconds(finished.seconds)}")
    return EXIT_OK


# ------------------------------------------------------------------------------- validate


def check_result(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The instance check's result: what its `<Label>.Result` state put at `$.steps.<key>`."""
    step = registry.the(registry.Phase.CHECK)
    for event in reversed(events):
        details = event.get("stateExitedEventDetails")
        if details and details.get("name") == f"{step.label}.Result":
            state = json.loads(details.get("output") or "{}")
            result = ((state.get("steps") or {}).get(step.key) or {}).get("result")
            return result if isinstance(result, dict) else None
    return None


def validate(ctx: Context, instance_id: str | None) -> int:
    payload: dict[str, Any] = {"mode": "validate"}
    if instance_id:
        payload["instance_id"] = ctx.stack.choose_instance(instance_id)
    try:
        DeployRequest.model_validate(payload)
    except ValueError as error:
        raise CliError(f"InvalidInput: {error}", EXIT_USAGE) from None
    arn = start(ctx, payload, execution_name("validate", instance_id))
    progress = ctx.progress()
    sfn = ctx.aws.client("stepfunctions")
    finished = follow(sfn, arn, progress, poll_seconds=ctx.poll_seconds, timeout=ctx.timeout, sleep=ctx.sleep)
    result = check_result(finished.events)
    if ctx.json_output:
        ctx.out.write(
            json.dumps({"status": finished.status, "result": result}, indent=2, sort_keys=True) + "\n"
        )
    elif result is not None:
        ctx.say()
        ctx.say(checks_table(result, ctx.term))
    if finished.status != "SUCCEEDED":
        return report_failure(ctx, finished)
    ctx.say(f"\nvalidation passed ({human_seconds(finished.seconds)})")
    return EXIT_OK


# ------------------------------------------------------------------------------- ledger


def _lock(ctx: Context, instance_id: str) -> dict[str, Any] | None:
    item = (
        ctx.aws.client("dynamodb")
        .get_item(
            TableName=ctx.stack.lock_table, Key={"instance_id": {"S": instance_id}}, ConsistentRead=True
        )
        .get("Item")
    )
    if not item or not item.get("holder", {}).get("S"):
        return None
    expires = float(item.get("expires_at", {}).get("N", "0") or 0)
    if expires and expires < time.time():
        return None
    return {"holder": item["holder"]["S"], "model": item.get("model", {}).get("S", "")}


def _holder_running(ctx: Context, holder: str) -> bool:
    try:
        status = ctx.aws.client("stepfunctions").describe_execution(executionArn=holder)["status"]
    except Exception:
        return True
    return bool(status == "RUNNING")


def instance_status(ctx: Context, instance_id: str) -> InstanceStatus:
    # every record: a resident deployed long ago still serves (the newest 50 would miss it)
    records = all_records(ctx.aws.client("dynamodb"), ctx.stack.ledger_table, instance_id)
    newest_first = records[::-1]
    lock = _lock(ctx, instance_id)
    if lock and not _holder_running(ctx, lock["holder"]):
        lock = None
    return InstanceStatus(
        instance_id=instance_id,
        deployed=current_deployment(newest_first),
        latest=newest_first[0] if newest_first else None,
        lock_holder=lock["holder"] if lock else None,
        lock_model=lock["model"] if lock else None,
        power=instance_power.describe(instance_power.power_of(ctx, instance_id)),
        residents=tuple(resident_models(records)),
    )


# What `status --json` says of each resident model (the contract scripts read).
RESIDENT_KEYS = (
    "model",
    "port",
    "unit",
    "engine",
    "quantization",
    "gpu_memory_bytes",
    "rss_bytes",
    "since",
    "memory_source",
    "execution",
    "status_url",
    "adapters",
)


def status(ctx: Context, instance_id: str | None) -> int:
    ids = [ctx.stack.choose_instance(instance_id)] if instance_id else list(ctx.stack.instance_ids)
    statuses = [instance_status(ctx, i) for i in ids]
    if ctx.json_output:
        body = [
            {
                "instance_id": s.instance_id,
                "deployed": s.deployed.model_dump(mode="json", exclude={"plan", "results"})
                if s.deployed
                else None,
                "latest_outcome": s.latest.outcome if s.latest else None,
                "deployment_in_progress": s.lock_holder,
                "power": s.power,
                "residents": [r.model_dump(mode="json", include=set(RESIDENT_KEYS)) for r in s.residents],
            }
            for s in statuses
        ]
        ctx.out.write(json.dumps(body, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    ctx.say(status_table(statuses, ctx.term))
    for entry in statuses:
        urls = [(r.model, r.status_url) for r in entry.residents if r.status_url]
        if not entry.residents and entry.deployed and entry.deployed.endpoints.get("status"):
            urls = [(None, entry.deployed.endpoints["status"])]
        if urls:  # one block per instance; each model named when it serves several
            named = len(urls) > 1
            ctx.say()
            ctx.say("\n".join(f"{entry.instance_id}{f' {m}' if named else ''}: {url}" for m, url in urls))
    return EXIT_OK


def history(ctx: Context, instance_id: str | None, limit: int) -> int:
    ids = [ctx.stack.choose_instance(instance_id)] if instance_id else list(ctx.stack.instance_ids)
    records: list[LedgerRecord] = []
    for each in ids:
        records.extend(recent(ctx.aws.client("dynamodb"), ctx.stack.ledger_table, each, limit=limit))
    records.sort(key=lambda r: r.started_at, reverse=True)
    records = records[:limit]
    if ctx.json_output:
        body = [r.model_dump(mode="json", exclude={"plan", "results"}) for r in records]
        ctx.out.write(json.dumps(body, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    if not records:
        ctx.say("no deployments recorded yet")
        return EXIT_OK
    ctx.say(history_table(records, ctx.term))
    return EXIT_OK


# ------------------------------------------------------------------------------- undeploy


UNDEPLOY = "undeploy"  # the registry's on-demand step


def undeploy_parameters(
    config: Settings, instance_id: str, restore_flux: bool, unit: str | None = None
) -> dict[str, str]:
    """The undeploy document's parameters, as the registry's step builds them: `unit` is the runtime
    unit removed with its own folders (None: the primary's)."""
    step = registry.STEPS[UNDEPLOY]
    assert step.instance is not None
    # No execution runs an undeploy: its state carries what the parameters read, and the
    # request ExecutionState requires is one without a model.
    state = ExecutionState(
        request=DeployRequest(mode="validate"),
        instance_id=instance_id,
        restore_flux=restore_flux,
        undeploy_unit=unit,
    )
    return step.instance.parameters(config, state)


@dataclass(frozen=True)
class Removal:
    """One runtime unit to remove, and the model the ledger says it serves (None: not known)."""

    unit: str
    model: str | None = None


def removals(residents: list[Resident], model: str | None, every: bool, target: str) -> list[Removal]:
    """What an undeploy removes: the primary (no model), that model's unit (CliError when the ledger
    knows no such model), or with `every` each resident unit by port and the primary last (it is
    sent even when the ledger knows none: the document removes whatever is installed)."""
    if every:
        others = [Removal(r.unit, r.model) for r in residents if not r.primary]
        primary = next((r for r in residents if r.primary), None)
        return [*others, Removal(RUNTIME_UNIT, primary.model if primary else None)]
    if model is None:
        primary = next((r for r in residents if r.primary), None)
        return [Removal(RUNTIME_UNIT, primary.model if primary else None)]
    found = next((r for r in residents if model in (r.model, r.deploy_model)), None)
    joined = next((r for r in residents if model in r.adapters), None)
    if found is None and joined is not None:
        # its process serves more than it: removing the unit would take the base and the others too
        raise CliError(
            f"{model} is a LoRA adapter served by {joined.unit} beside {joined.model} "
            f"(adapters: {', '.join(joined.adapters)}); `undeploy {joined.model}` removes the unit with "
            "all of them, one adapter alone cannot be removed yet; nothing was sent",
            EXIT_USAGE,
        )
    if found is None:
        serving = ", ".join(f"{r.model} ({r.unit})" for r in residents) or "nothing"
        raise CliError(f"{model} is not served on {target} (ledger: {serving}); nothing was sent", EXIT_USAGE)
    return [Removal(found.unit, found.model)]


def undeploy(
    ctx: Context,
    instance_id: str | None,
    restore_flux: bool,
    timeout: float = 330.0,
    *,
    model: str | None = None,
    every: bool = False,
) -> int:
    """Remove the primary's unit (no model), the unit serving `model`, or with `every` each runtime
    unit the ledger knows, the primary last: one document and one `undeployed` record per unit."""
    target = ctx.stack.choose_instance(instance_id)
    lock = _lock(ctx, target)
    if lock and _holder_running(ctx, lock["holder"]):
        raise CliError(
            f"DeploymentInProgress: instance {target} is being deployed by "
            f"{lock['holder'].rsplit(':', 1)[-1]} (model {lock['model'] or '?'}); nothing was changed"
        )
    dynamodb = ctx.aws.client("dynamodb")
    # the bare undeploy sends what it always sent; a named model or --all needs the inventory
    residents = (
        resident_models(all_records(dynamodb, ctx.stack.ledger_table, target)) if model or every else []
    )
    queue = removals(residents, model, every, target)
    done: list[str] = []
    results: list[dict[str, Any]] = []
    ssm_status: str | None = None
    while queue:
        removal = queue.pop(0)
        # Flux comes back once, after the last unit: only then is its memory free
        start_flux = restore_flux and not queue
        try:
            ssm_status, result = _undeploy_unit(ctx, target, removal, start_flux, timeout)
        except DeployError as error:
            if ctx.json_output:
                failed: dict[str, Any] = {
                    "status": "Failed",
                    "error": type(error).__name__,
                    "message": str(error),
                    "result": None,
                }
                ctx.out.write(
                    json.dumps({**failed, "results": results} if every else failed, indent=2) + "\n"
                )
            ctx.err.write(error_line(type(error).__name__, str(error)) + "\n")
            return EXIT_FAILED
        done.append(removal.unit)
        results.append(result)
        if every and queue:
            # units the instance still has that the ledger does not know (a failed rollback's):
            # removed too, before the primary (the last in the queue)
            known = {*done, *(r.unit for r in queue)}
            unknown = [str(u) for u in result.get("remaining_units") or [] if str(u) not in known]
            queue[-1:-1] = [Removal(unit) for unit in unknown]
    if ctx.json_output:
        body = (
            {"status": ssm_status, "results": results}
            if every
            else {"status": ssm_status, "result": results[-1]}
        )
        ctx.out.write(json.dumps(body, indent=2) + "\n")
    return EXIT_OK


def _undeploy_unit(
    ctx: Context, target: str, removal: Removal, start_flux: bool, timeout: float
) -> tuple[str | None, dict[str, Any]]:
    """Send the undeploy document for one unit, wait for it, record it, say what it did; the SSM
    status and the document's result (DeployError when it failed: nothing is recorded)."""
    step = registry.STEPS[UNDEPLOY]
    assert step.document is not None
    config = ctx.stack.settings()
    document = config.document(step.document)
    started = time.monotonic()
    ssm = ctx.aws.client("ssm")
    ref = ssm_commands.send(
        ssm,
        step=step.key,
        document=document,
        instance_id=target,
        parameters=undeploy_parameters(config, target, start_flux, unit=removal.unit),
        timeout_seconds=round(timeout),
        now=time.time(),
        comment="deploy-model undeploy",
        plugins=step.plugins,
    )
    ctx.say(f"sent {document} to {target} for {removal.unit} (command {ref.command_id})")
    ref = ssm_commands.wait(ssm, ref, error=step.error, sleep=ctx.sleep, poll_seconds=ctx.poll_seconds)
    result = ref.result or {}
    if not result.get("ok", False):
        raise step.error(str(result.get("error") or f"{document} reported no success on {target}"))
    record = undeploy_record(
        target,
        instance_type=ctx.stack.instance_type,
        now=utcnow(),
        command_id=ref.command_id,
        result=result,
        unit=removal.unit,
        model=removal.model,
    )
    put(ctx.aws.client("dynamodb"), ctx.stack.ledger_table, record)
    if not ctx.json_output:
        ctx.say(_undeploy_summary(ctx, target, removal, result, time.monotonic() - started))
    return ref.ssm_status, result


def _undeploy_summary(
    ctx: Context, target: str, removal: Removal, result: dict[str, Any], seconds: float
) -> str:
    removed = result.get("removed") or []
    what = f"{removal.model} " if removal.model else ""
    lines = [
        f"undeployed {what}from {target} in {human_seconds(seconds)}",
        f"  unit      {removal.unit} {'stopped' if result.get('stopped') else 'was not running'}",
        f"  removed   {len(removed)} path(s)" + "".join(f"\n              {path}" for path in removed),
    ]
    if "remaining_units" in result:  # older documents do not say
        remaining = result.get("remaining_units") or []
        gone = " (the runtime they shared was removed)" if result.get("runtime_removed") else ""
        lines.append(f"  remaining {', '.join(remaining) if remaining else 'no runtime unit' + gone}")
    if result.get("router_removed"):
        lines.append("  router    removed with the last runtime unit (the stable port is free)")
    elif result.get("router_backend_removed"):
        lines.append(
            "  router    its backend was this unit: the stable port answers 502 until a deployment "
            "points it at another model"
        )
    lines += [
        f"  flux      {ctx.stack.flux_service} {result.get('flux_state', '?')}"
        + (" (started)" if result.get("flux_started") else ""),
        "  models stay cached on the instance",
    ]
    return "\n".join(lines)
