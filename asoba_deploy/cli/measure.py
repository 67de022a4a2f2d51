"""deploy-model bench and deploy-model cost: the benchmark of the deployment in place, sent on
demand like undeploy, and the cost of what the ledger says was served."""

from __future__ import annotations

import json
import time
from datetime import datetime

from rich.console import Group, RenderableType
from rich.text import Text

from asoba_deploy.cli.benchmark_view import benchmark_lines
from asoba_deploy.cli.commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Context,
    _holder_running,
    _lock,
)
from asoba_deploy.cli.render import Cell, error_line, fields, grid, human_seconds, human_time, styled
from asoba_deploy.cli.stack import CliError
from asoba_deploy.core import benchmark as bench_core
from asoba_deploy.core import commands as ssm_commands
from asoba_deploy.core import cost as cost_core
from asoba_deploy.core import steps as registry
from asoba_deploy.core.errors import DeployError
from asoba_deploy.core.instance_step import AGENT_MIN_TIMEOUT_SECONDS, AGENT_REPORT_MARGIN_SECONDS
from asoba_deploy.core.ledger import (
    LedgerRecord,
    all_records,
    bench_record,
    current_deployment,
    put,
    resident_deployment,
    utcnow,
)

BENCHMARK = "benchmark"  # the registry's step; the CLI sends its document on demand


# ------------------------------------------------------------------------------- rendering


def _benchmark_view(record: LedgerRecord, seconds: float) -> RenderableType:
    result = record.benchmark
    ok = result is not None and result.ok
    title = (
        styled(f"Benchmark of {record.model} on {record.instance_id}", "bold green")
        if ok
        else styled(f"Benchmark of {record.model} on {record.instance_id} failed", "bold red")
    )
    rows: list[tuple[str, Cell]] = [("benchmark", benchmark_lines(result))]
    if ok and result is not None:
        rows.append(
            ("requests", f"{result.max_tokens} tokens each after a {result.prompt_tokens}-token prompt")
        )
    rows.append(("took", human_seconds(seconds)))
    return Group(title, fields(rows))


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


def _tokens(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _per_million(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def cost_view(served: list[cost_core.Served], *, since: datetime | None, now: datetime) -> RenderableType:
    window = f"since {human_time(since.isoformat())} UTC" if since else "since the first record"
    parts: list[RenderableType] = [
        Text.assemble(("Cost ", "bold"), f"{window}, until {human_time(now.isoformat())} UTC")
    ]
    if not served:
        parts.append(Text("  no deployment served in this window"))
        return Group(*parts)
    headers = ["", "deployments", "hours", "cost", "tokens", "$/M tokens"]
    for title, key in (("model", "model"), ("instance", "instance_id")):
        rows = [
            [
                total.key,
                str(total.deployments),
                f"{total.hours:.3f}",
                _usd(total.usd),
                _tokens(total.tokens),
                _per_million(total.usd_per_million_tokens),
            ]
            for total in cost_core.totals(served, key)
        ]
        parts += [Text(""), grid([title, *headers[1:]], rows, indent=2, align="<>>>>>")]
    detail = [
        [
            human_time(s.start.isoformat()),
            "now" if s.ongoing else human_time(s.end.isoformat()),
            s.instance_id,
            s.model,
            s.instance_type,
            "unknown" if s.usd_per_hour is None else f"${s.usd_per_hour:.3f}",
            f"{s.hours:.3f}",
            _usd(s.usd),
            _tokens(s.tokens),
        ]
        for s in served
    ]
    parts += [
        Text(""),
        grid(
            ["served from (UTC)", "to", "instance", "model", "type", "per hour", "hours", "cost", "tokens"],
            detail,
            indent=2,
            align="<<<<<>>>>",
        ),
        Text(""),
        Text(
            "  hours: from each deployment's healthy time to its replacement, undeploy or now (ledger);"
            "\n  tokens: the runtime's /metrics counter as its last benchmark read it, less the"
            " benchmarks' own\n  (deploy-model bench reads it again)"
        ),
    ]
    return Group(*parts)


# ------------------------------------------------------------------------------- bench


def benchmark_parameters(ctx: Context, deployed: LedgerRecord) -> tuple[dict[str, str], int]:
    """The benchmark document's parameters for the deployment in place, and the budget."""
    if deployed.port is None:
        raise CliError(f"the ledger's record of {deployed.model} on {deployed.instance_id} has no port")
    config = ctx.stack.settings()
    served = deployed.deploy_model or deployed.model or ""
    parameters = bench_core.document_parameters(config, port=deployed.port, model=served)
    budget = int(config.step_budgets.benchmark)
    parameters["executionTimeout"] = str(max(AGENT_MIN_TIMEOUT_SECONDS, budget - AGENT_REPORT_MARGIN_SECONDS))
    return parameters, budget


def bench(ctx: Context, model: str | None, instance_id: str | None) -> int:
    target = ctx.stack.choose_instance(instance_id)
    lock = _lock(ctx, target)
    if lock and _holder_running(ctx, lock["holder"]):
        raise CliError(
            f"DeploymentInProgress: instance {target} is being deployed by "
            f"{lock['holder'].rsplit(':', 1)[-1]} (model {lock['model'] or '?'}); benchmark it afterwards"
        )
    dynamodb = ctx.aws.client("dynamodb")
    # every record: the primary may have been deployed long before the newest 50 records
    records = all_records(dynamodb, ctx.stack.ledger_table, target)
    deployed = current_deployment(records[::-1])
    if model is not None and (deployed is None or model not in (deployed.model, deployed.deploy_model)):
        # not the primary's: a model resident beside it (`deploy --keep-others`) is benchmarked too
        deployed = resident_deployment(records, model)
        if deployed is None:
            raise CliError(
                f"{model} is not what {target} serves (ledger; deploy-model status lists what it serves)",
                EXIT_USAGE,
            )
    if deployed is None:
        raise CliError(f"nothing is deployed on {target} (ledger): deploy a model first", EXIT_USAGE)
    step = registry.STEPS[BENCHMARK]
    parameters, budget = benchmark_parameters(ctx, deployed)
    document = ctx.stack.document(str(step.document))
    ssm = ctx.aws.client("ssm")
    started = time.monotonic()
    ref = ssm_commands.send(
        ssm,
        step=step.key,
        document=document,
        instance_id=target,
        parameters=parameters,
        timeout_seconds=budget,
        now=time.time(),
        comment="deploy-model bench",
        plugins=step.plugins,
    )
    ctx.say(
        f"sent {document} to {target} (command {ref.command_id}): {deployed.model} on port {deployed.port}"
    )
    try:
        ref = ssm_commands.wait(ssm, ref, error=step.error, sleep=ctx.sleep, poll_seconds=ctx.poll_seconds)
        result = ref.result or {}
    except DeployError as error:
        # recorded like the deploy's benchmark: the failure, the deployment untouched
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    record = bench_record(deployed, now=utcnow(), command_id=ref.command_id, result=result)
    put(dynamodb, ctx.stack.ledger_table, record)
    assert record.benchmark is not None
    if ctx.json_output:
        body = {
            "benchmark": record.benchmark.model_dump(mode="json"),
            "result": result,
            "record_key": record.record_key,
        }
        ctx.out.write(json.dumps(body, indent=2, sort_keys=True) + "\n")
    ctx.say(ctx.term.text(_benchmark_view(record, time.monotonic() - started)))
    if not record.benchmark.ok:
        ctx.err.write(error_line(step.error.__name__, record.benchmark.error) + "\n")
        return EXIT_FAILED
    return EXIT_OK


# ------------------------------------------------------------------------------- cost


def cost(ctx: Context, since_text: str | None, instance_id: str | None) -> int:
    now = utcnow()
    try:
        since = cost_core.parse_since(since_text, now=now) if since_text else None
    except ValueError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    ids = [ctx.stack.choose_instance(instance_id)] if instance_id else list(ctx.stack.instance_ids)
    dynamodb = ctx.aws.client("dynamodb")
    records = [record for each in ids for record in all_records(dynamodb, ctx.stack.ledger_table, each)]
    served = cost_core.served_by_deployment(records, now=now, since=since)
    if ctx.json_output:
        ctx.out.write(
            json.dumps(cost_core.report(served, since=since, now=now), indent=2, sort_keys=True) + "\n"
        )
        return EXIT_OK
    ctx.say(ctx.term.text(cost_view(served, since=since, now=now)))
    return EXIT_OK
