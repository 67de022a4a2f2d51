"""Several models resident on one instance, from the CLI's side: the ledger's inventory of what each
instance serves (ledger.resident_models), `status --json` with it, `undeploy <model>` / `--all`,
and the deploy flags `--keep-others` / `--evict lru` with the plan's view of the other models.

The ledger is moto's DynamoDB; SSM is a scripted agent that removes the unit it is sent for and
answers as the undeploy document does (unit, runtime_removed, remaining_units).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from asoba_deploy.cli import commands
from asoba_deploy.cli.main import build_parser, main, normalize_argv
from asoba_deploy.cli.render import PLAIN, InstanceStatus, plan_table, status_table
from asoba_deploy.cli.stack import Aws, CliError, StackInfo
from asoba_deploy.core import ledger
from asoba_deploy.core.config import RUNTIME_UNIT
from asoba_deploy.core.ledger import LedgerRecord, current_deployment, resident_models
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.residents import resident_unit
from tests.unit.test_cli import OUTPUTS, recording

INSTANCE = "i-0123456789abcdef0"
GIB = 1024**3
QWEN, LLAMA, TINY = resident_unit("qwen3-14b"), resident_unit("llama-3-8b"), resident_unit("tiny-llama")


def at(minute: int) -> str:
    return f"2026-03-01T10:{minute:02d}:00+00:00"


def service(unit: str, gpu: int, rss: int, state: str = "active") -> dict[str, Any]:
    return {"unit": unit, "state": state, "rss_bytes": rss, "gpu_memory_bytes": gpu, "port": None}


def deployed(
    execution: str,
    model: str,
    minute: int,
    *,
    unit: str = RUNTIME_UNIT,
    port: int = 8001,
    evict: tuple[str, ...] = (),
    measured: tuple[dict[str, Any], ...] = (),
    outcome: str = "succeeded",
    dry_run: bool = False,
    plan: bool = True,
) -> LedgerRecord:
    """A deployment's record as build_record writes it: the plan (unit, port, engine, evictions,
    GPU/RAM need) and collect-resources' services as measured before it changed anything."""
    return LedgerRecord.model_validate(
        {
            "instance_id": INSTANCE,
            "record_key": f"{at(minute)}#{execution}",
            "execution": f"arn:aws:states:us-west-2:123456789012:execution:m:{execution}",
            "model": model,
            "deploy_model": model,
            "dry_run": dry_run,
            "outcome": outcome,
            "started_at": at(minute),
            "finished_at": at(minute),
            "instance_type": "g5.xlarge",
            "cost_per_hour_usd": 1.0,
            "quantization": "none",
            "port": port if plan else None,
            "endpoints": {"status": f"http://10.0.0.5:{port}/status"} if plan else {},
            "results": {"collect_resources": {"services": list(measured)}},
            "plan": {
                "unit": unit,
                "port": port,
                "engine": "vllm",
                "quantization": "none",
                "evict_units": list(evict),
                "gpu": {"need_bytes": 5 * GIB},
                "ram": {"need_bytes": 2 * GIB},
            }
            if plan
            else None,
        }
    )


def undeployed(minute: int, unit: str | None) -> LedgerRecord:
    record = ledger.undeploy_record(
        INSTANCE,
        instance_type="g5.xlarge",
        now=datetime.fromisoformat(at(minute)),
        command_id=f"c-{minute}",
        result={"ok": True},
    )
    return record.model_copy(update={"unit": unit})  # None: a record from before resident models


def rolled_back(execution: str, minute: int) -> LedgerRecord:
    return deployed(execution, "x", minute, outcome="rolled-back")


def served(records: list[LedgerRecord]) -> list[tuple[str | None, str]]:
    return [(r.model, r.unit) for r in resident_models(records)]


# ------------------------------------------------------------------------------- the inventory


def test_two_residents_an_eviction_and_an_undeploy_replay_into_what_runs() -> None:
    # Given a primary, two models kept beside it, a third that evicted the least recently used one,
    # and an undeploy of the second
    records = [
        deployed("d1", "mistral", 1),
        deployed("d2", "llama-3-8b", 2, unit=LLAMA, port=8002),
        deployed("d3", "qwen3-14b", 3, unit=QWEN, port=8003),
        deployed(
            "d4",
            "tiny-llama",
            4,
            unit=TINY,
            port=8002,
            evict=(LLAMA,),
            measured=(service(RUNTIME_UNIT, 6 * GIB, 3 * GIB), service(LLAMA, GIB, GIB)),
        ),
        undeployed(5, QWEN),
    ]
    # When the records are replayed (in whatever order the table gave them)
    residents = resident_models(list(reversed(records)))
    # Then the primary and the model that evicted llama serve, by port
    assert [(r.model, r.unit, r.port) for r in residents] == [
        ("mistral", RUNTIME_UNIT, 8001),
        ("tiny-llama", TINY, 8002),
    ]
    primary, tiny = residents
    # And the primary's bytes are what the later deployment measured; tiny's are its plan's need
    assert (primary.gpu_memory_bytes, primary.rss_bytes, primary.memory_source) == (
        6 * GIB,
        3 * GIB,
        "measured",
    )
    assert (tiny.gpu_memory_bytes, tiny.rss_bytes, tiny.memory_source) == (5 * GIB, 2 * GIB, "planned")
    assert (tiny.engine, tiny.quantization, tiny.since) == ("vllm", "none", at(4))
    assert tiny.execution.endswith(":d4") and tiny.status_url == "http://10.0.0.5:8002/status"


def test_adapters_that_joined_a_process_are_listed_with_it_not_instead_of_it() -> None:
    # Given the base served by the primary, and two adapters that joined its process
    base = deployed("d1", "tiny-base", 1)

    def joined(execution: str, adapter: str, minute: int) -> LedgerRecord:
        record = deployed(execution, adapter, minute)
        assert record.plan is not None
        return record.model_copy(update={"plan": {**record.plan, "joins": {"unit": RUNTIME_UNIT}}})

    records = [base, joined("d2", "lora-a", 2), joined("d3", "lora-b", 3), joined("d4", "lora-a", 4)]
    # When the inventory is read
    (primary,) = resident_models(records)
    # Then the unit still serves the base, with both adapters (a redeploy listed once)
    assert (primary.model, primary.unit, primary.adapters) == (
        "tiny-base",
        RUNTIME_UNIT,
        ["lora-b", "lora-a"],
    )
    assert current_deployment(records[::-1]) == base
    assert ledger.resident_deployment(records, "lora-b") == base
    # And undeploying one adapter alone is refused (its unit serves the base and the other one)
    with pytest.raises(CliError, match=r"lora-b is a LoRA adapter served by asoba-inference\.service"):
        commands.removals(resident_models(records), "lora-b", False, INSTANCE)
    assert commands.removals(resident_models(records), "tiny-base", False, INSTANCE) == [
        commands.Removal(RUNTIME_UNIT, "tiny-base")
    ]


def test_undeploying_a_resident_leaves_the_primary_s_deployment_in_place() -> None:
    # Given a primary and a resident beside it, the resident then undeployed
    primary = deployed("d1", "mistral", 1)
    records = [primary, deployed("d2", "qwen3-14b", 2, unit=QWEN, port=8002), undeployed(3, QWEN)]
    # When the deployment in place is read (newest first, as `recent` gives them)
    # Then it is still the primary's, and the inventory holds it alone
    assert current_deployment(records[::-1]) == primary
    assert served(records) == [("mistral", RUNTIME_UNIT)]
    # And undeploying the primary ends it while the resident keeps serving
    records = [primary, deployed("d2", "qwen3-14b", 2, unit=QWEN, port=8002), undeployed(3, RUNTIME_UNIT)]
    assert current_deployment(records[::-1]) is None
    assert served(records) == [("qwen3-14b", QWEN)]


def test_a_rolled_back_deploy_brings_back_what_it_replaced_and_evicted() -> None:
    # Given a resident that a fleet deployment evicted, and the rollout then rolled back
    before = deployed("d1", "mistral", 1)
    records = [
        before,
        deployed("d2", "llama-3-8b", 2, unit=LLAMA, port=8002),
        deployed("d3", "qwen3-14b", 3, evict=(LLAMA,)),
        rolled_back("d3", 4),
    ]
    # When replayed / Then the deployment before serves again, and so does the evicted resident
    assert served(records) == [("mistral", RUNTIME_UNIT), ("llama-3-8b", LLAMA)]
    assert current_deployment(records[::-1]) == before


def test_old_records_without_unit_read_as_the_primary_and_an_undeploy_of_everything() -> None:
    # Given records written before resident models: a deploy without a plan unit, an undeploy
    # without a unit (it removed everything), and a plan-less deployment after it
    old_plan = deployed("d1", "mistral", 1)
    assert old_plan.plan is not None
    old_plan.plan.pop("unit")
    resident = deployed("d2", "qwen3-14b", 2, unit=QWEN, port=8002)
    # When replayed / Then the old deployment is the primary's
    assert served([old_plan]) == [("mistral", RUNTIME_UNIT)]
    # And an undeploy without a unit removed every model, the residents too
    assert served([old_plan, resident, undeployed(3, None)]) == []
    assert current_deployment([undeployed(3, None), resident, old_plan]) is None
    # And a record without any plan is the primary's, its memory unknown
    (bare,) = resident_models([deployed("d4", "tiny-llama", 4, plan=False)])
    assert (bare.unit, bare.port, bare.memory_source, bare.gpu_memory_bytes) == (
        RUNTIME_UNIT,
        None,
        None,
        None,
    )


def test_failures_dry_runs_and_inactive_readings_change_nothing() -> None:
    # Given a deployment, then a dry run that saw its unit stopped and a failed deploy beside it
    records = [
        deployed("d1", "mistral", 1),
        deployed("p2", "qwen3-14b", 2, unit=QWEN, outcome="planned", dry_run=True),
        deployed(
            "f3",
            "qwen3-14b",
            3,
            unit=QWEN,
            outcome="failed",
            measured=(service(RUNTIME_UNIT, 0, 0, "failed"),),
        ),
    ]
    # When replayed / Then the primary alone serves, with its planned bytes (a stopped unit measures nothing)
    (primary,) = resident_models(records)
    assert (primary.model, primary.memory_source, primary.gpu_memory_bytes) == ("mistral", "planned", 5 * GIB)


class PagedDynamoDb:
    """query in pages of two items, as DynamoDB pages a large partition (1 MB each)."""

    def __init__(self, records: list[LedgerRecord]) -> None:
        self.items = [{"record": {"S": r.model_dump_json()}} for r in records]
        self.queries: list[dict[str, Any]] = []

    def query(self, **request: Any) -> dict[str, Any]:
        self.queries.append(request)
        start = int(request.get("ExclusiveStartKey", {}).get("at", 0))
        page: dict[str, Any] = {"Items": self.items[start : start + 2]}
        if start + 2 < len(self.items):
            page["LastEvaluatedKey"] = {"at": start + 2}
        return page


def test_all_records_follows_every_page() -> None:
    # Given five records, served two a page
    records = [deployed(f"d{i}", "mistral", i) for i in range(5)]
    table = PagedDynamoDb(records)
    # When every record is read / Then all five come back, oldest first, in three queries
    assert ledger.all_records(table, "ledger", INSTANCE) == records
    assert len(table.queries) == 3 and table.queries[0]["ScanIndexForward"] is True


# ------------------------------------------------------------------------------- the CLI


class ScriptedUndeploy:
    """SSM running the undeploy document: it removes the unit it is sent for from those installed
    and answers with the document's result (unit, runtime_removed, remaining_units)."""

    def __init__(self, installed: list[str]) -> None:
        self.installed = list(installed)
        self.sent: list[dict[str, Any]] = []

    @property
    def units(self) -> list[str]:
        return [s["Parameters"]["ServiceUnit"][0] for s in self.sent]

    def send_command(self, **request: Any) -> dict[str, Any]:
        self.sent.append(request)
        return {"Command": {"CommandId": f"c-{len(self.sent)}"}}

    def get_command_invocation(self, **_: Any) -> dict[str, Any]:
        unit = self.units[-1]
        stopped = unit in self.installed
        self.installed = [u for u in self.installed if u != unit]
        result = {
            "ok": True,
            "stopped": stopped,
            "removed": [f"/etc/systemd/system/{unit}"] if stopped else [],
            "flux_state": "inactive",
            "unit": unit,
            "runtime_removed": not self.installed,
            "remaining_units": self.installed,
        }
        return {"Status": "Success", "StandardOutputContent": json.dumps(result) + "\n"}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """moto's DynamoDB with the stack's ledger and lock tables (EC2 knows no instance: power unknown)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-west-2")
        dynamodb.create_table(
            TableName="ledger",
            KeySchema=[
                {"AttributeName": "instance_id", "KeyType": "HASH"},
                {"AttributeName": "record_key", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "instance_id", "AttributeType": "S"},
                {"AttributeName": "record_key", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.create_table(
            TableName="lock",
            KeySchema=[{"AttributeName": "instance_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "instance_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield Aws.connect("us-west-2", None)


def context(aws: Aws, *, json_output: bool = False) -> tuple[commands.Context, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    ctx = commands.Context(
        aws=aws,
        stack_name="AsobaModelDeploy",
        out=out,
        err=err,
        json_output=json_output,
        poll_seconds=0.1,
        sleep=lambda _: None,
        _stack=StackInfo.from_outputs("AsobaModelDeploy", OUTPUTS),
    )
    return ctx, out, err


def write(aws: Aws, records: list[LedgerRecord]) -> None:
    for record in records:
        ledger.put(aws.client("dynamodb"), "ledger", record)


def ledger_of(aws: Aws) -> list[LedgerRecord]:
    return ledger.all_records(aws.client("dynamodb"), "ledger", INSTANCE)


def three_models() -> list[LedgerRecord]:
    """A primary and two residents (tiny on 8003 deployed before qwen on 8002), then 60 dry runs:
    more than the 50 newest records `status` used to read."""
    return [
        deployed("d1", "mistral", 1, measured=()),
        deployed("d2", "tiny-llama", 2, unit=TINY, port=8003),
        deployed("d3", "qwen3-14b", 3, unit=QWEN, port=8002, measured=(service(TINY, 3 * GIB, GIB),)),
        *(deployed(f"p{i}", "qwen3-14b", 4, outcome="planned", dry_run=True) for i in range(60)),
    ]


def test_status_json_lists_every_resident_model_by_port(aws: Aws) -> None:
    # Given an instance serving three models, the last deployment 60 records back
    write(aws, three_models())
    ctx, out, _ = context(aws, json_output=True)
    # When its status is asked as JSON
    assert commands.status(ctx, INSTANCE) == 0
    (body,) = json.loads(out.getvalue())
    # Then the existing keys stay, the primary is `deployed`
    assert {"instance_id", "deployed", "latest_outcome", "deployment_in_progress", "power"} <= body.keys()
    assert body["deployed"]["model"] == "mistral" and body["latest_outcome"] == "planned"
    # And `residents` lists each model, sorted by port, with its unit, engine and memory
    residents = body["residents"]
    assert [(r["model"], r["port"], r["unit"]) for r in residents] == [
        ("mistral", 8001, RUNTIME_UNIT),
        ("qwen3-14b", 8002, QWEN),
        ("tiny-llama", 8003, TINY),
    ]
    for key in ("engine", "quantization", "gpu_memory_bytes", "rss_bytes", "since", "memory_source"):
        assert all(key in r for r in residents), key
    tiny = residents[2]
    assert (tiny["gpu_memory_bytes"], tiny["rss_bytes"], tiny["memory_source"]) == (3 * GIB, GIB, "measured")
    assert (residents[1]["memory_source"], residents[1]["since"]) == ("planned", at(3))


def test_the_status_table_has_one_row_per_model(aws: Aws) -> None:
    # Given the same instance / When its status is printed for a pipe
    write(aws, three_models())
    ctx, out, _ = context(aws)
    assert commands.status(ctx, INSTANCE) == 0
    lines = out.getvalue().splitlines()
    # Then each model has its row, the planned bytes marked as the plan's estimate
    rows = [line for line in lines if line.startswith(INSTANCE) and "GiB" in line]
    assert [row.split()[1:4] for row in rows] == [
        ["mistral", "8001", RUNTIME_UNIT],
        ["qwen3-14b", "8002", QWEN],
        ["tiny-llama", "8003", TINY],
    ]
    assert "~5.0 GiB" in rows[1] and "3.0 GiB" in rows[2] and "~" not in rows[2]
    assert any(line.startswith("~: the plan's estimate") for line in lines)


def test_undeploy_of_a_model_sends_its_unit_and_folders_only(aws: Aws) -> None:
    # Given three models served, and an agent with their units installed
    write(aws, three_models())
    agent = ScriptedUndeploy([RUNTIME_UNIT, QWEN, TINY])
    aws._clients["ssm"] = agent
    ctx, out, err = context(aws)
    # When qwen3-14b is undeployed
    code = commands.undeploy(ctx, INSTANCE, restore_flux=False, model="qwen3-14b")
    # Then one document went out, for qwen's unit with its own env and state folders
    assert code == 0, err.getvalue()
    (sent,) = agent.sent
    assert sent["DocumentName"] == "AsobaModelDeploy-undeploy"
    parameters = {name: values[0] for name, values in sent["Parameters"].items()}
    assert parameters["ServiceUnit"] == QWEN
    assert parameters["EnvDir"] == "/etc/asoba-inference/models/qwen3-14b"
    assert parameters["StateDir"] == "/var/lib/asoba-inference/models/qwen3-14b"
    assert parameters["StartFlux"] == "false"
    # And the ledger has one `undeployed` record naming that unit; the other two still serve
    records = ledger_of(aws)
    assert (records[-1].outcome, records[-1].unit, records[-1].model) == ("undeployed", QWEN, "qwen3-14b")
    assert [r.model for r in resident_models(records)] == ["mistral", "tiny-llama"]
    assert current_deployment(records[::-1]) is not None
    # And it says what was removed and what keeps running
    text = out.getvalue()
    assert f"undeployed qwen3-14b from {INSTANCE}" in text
    assert f"remaining {RUNTIME_UNIT}, {TINY}" in text


def test_undeploy_of_an_unknown_model_sends_nothing(aws: Aws) -> None:
    # Given three models served
    write(aws, three_models())
    agent = ScriptedUndeploy([RUNTIME_UNIT, QWEN, TINY])
    aws._clients["ssm"] = agent
    ctx, _, _ = context(aws)
    before = len(ledger_of(aws))
    # When a model it does not serve is undeployed
    with pytest.raises(CliError) as raised:
        commands.undeploy(ctx, INSTANCE, restore_flux=False, model="llama-3-8b")
    # Then it is a usage error naming what it serves, and nothing was sent or recorded
    assert raised.value.exit_code == commands.EXIT_USAGE
    assert "llama-3-8b is not served on" in str(raised.value) and "qwen3-14b" in str(raised.value)
    assert agent.sent == [] and len(ledger_of(aws)) == before


def test_undeploy_all_removes_the_residents_by_port_then_the_primary(aws: Aws) -> None:
    # Given three models in the ledger, and a fourth unit installed that the ledger does not know
    write(aws, three_models())
    ghost = resident_unit("ghost")
    agent = ScriptedUndeploy([RUNTIME_UNIT, QWEN, TINY, ghost])
    aws._clients["ssm"] = agent
    ctx, out, err = context(aws, json_output=True)
    # When everything is undeployed, Flux restored
    code = commands.undeploy(ctx, INSTANCE, restore_flux=True, every=True)
    # Then the residents go by port, the unknown one found on the instance next, the primary last
    assert code == 0, err.getvalue()
    assert agent.units == [QWEN, TINY, ghost, RUNTIME_UNIT]
    # And Flux is started once, with the last unit
    assert [s["Parameters"]["StartFlux"][0] for s in agent.sent] == ["false", "false", "false", "true"]
    # And each unit has its `undeployed` record; nothing is left in the inventory
    records = ledger_of(aws)
    assert [r.unit for r in records if r.outcome == "undeployed"] == agent.units
    assert resident_models(records) == [] and current_deployment(records[::-1]) is None
    body = json.loads(out.getvalue())
    assert [r["unit"] for r in body["results"]] == agent.units
    assert body["results"][-1]["runtime_removed"] is True


def test_a_bare_undeploy_removes_the_primary_only(aws: Aws) -> None:
    # Given three models served
    write(aws, three_models())
    agent = ScriptedUndeploy([RUNTIME_UNIT, QWEN, TINY])
    aws._clients["ssm"] = agent
    ctx, _, err = context(aws)
    # When undeploy names no model
    assert commands.undeploy(ctx, INSTANCE, restore_flux=False) == 0, err.getvalue()
    # Then the primary's unit goes, recorded as such, and the residents keep serving
    assert agent.units == [RUNTIME_UNIT]
    records = ledger_of(aws)
    assert records[-1].unit == RUNTIME_UNIT
    assert [r.model for r in resident_models(records)] == ["qwen3-14b", "tiny-llama"]


# ------------------------------------------------------------------------------- deploy flags


def test_keep_others_and_evict_go_into_the_request() -> None:
    # Given the flags on the command line
    options = build_parser().parse_args(normalize_argv(["qwen3-14b", "--keep-others", "--evict", "lru"]))
    # When the request is built from them / Then it carries the contract's fields, validated
    assert (options.keep_others, options.evict) == (True, "lru")
    assert commands.build_request("qwen3-14b", keep_others=True, evict="lru") == {
        "model": "qwen3-14b",
        "resident": "keep",
        "evict": "lru",
    }
    assert commands.build_request("qwen3-14b", keep_others=True) == {"model": "qwen3-14b", "resident": "keep"}
    with pytest.raises(commands.InvalidInput, match="evict"):
        commands.build_request("qwen3-14b", evict="lru")


def test_evict_without_keep_others_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Given --evict lru alone / When it is parsed / Then exit 2 with a line saying what it needs
    with pytest.raises(SystemExit) as exit_info:
        main(["qwen3-14b", "--evict", "lru"])
    assert exit_info.value.code == 2
    assert "--evict lru: only with --keep-others" in capsys.readouterr().err


def test_undeploy_takes_a_model_or_all() -> None:
    parse = build_parser().parse_args
    assert (parse(["undeploy", "qwen3-14b"]).model, parse(["undeploy", "qwen3-14b"]).every) == (
        "qwen3-14b",
        False,
    )
    assert (parse(["undeploy", "--all"]).model, parse(["undeploy", "--all"]).every) == (None, True)
    with pytest.raises(SystemExit):
        main(["undeploy", "qwen3-14b", "--all"])


def test_the_plan_shows_the_unit_the_residents_and_the_evictions() -> None:
    # Given a dry run's plan for a model placed beside two others, one of them to be evicted
    plan = Plan.model_validate(
        {
            **recording("dry_run")["output"],
            "unit": QWEN,
            "port": 8002,
            "resident": "keep",
            "resident_models": [
                {
                    "model": "mistral",
                    "unit": RUNTIME_UNIT,
                    "port": 8001,
                    "gpu_memory_bytes": 6 * GIB,
                    "rss_bytes": GIB,
                }
            ],
            "evict_units": [TINY],
            "would_evict": [TINY, LLAMA],
        }
    )
    # When it is rendered
    text = plan_table(plan, PLAIN)
    # Then the unit, the model that keeps serving, the evicted unit and what would have to go are named
    assert f"8002 / {QWEN} (beside the primary)" in text
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert f"keeps serving mistral on port 8001 ({RUNTIME_UNIT}): GPU 6.0 GiB, RAM 1.0 GiB measured" in lines
    assert f"evicts {TINY} (least recently used first; stopped before the sync)" in lines
    assert any(line.startswith(f"would evict {TINY}, {LLAMA}") for line in lines)


def test_a_status_built_without_inventory_still_shows_the_deployment() -> None:
    # Given a status with the primary's record only (no residents read)
    record = LedgerRecord.model_validate(recording("deploy")["output"])
    # When it is rendered / Then the deployment's row is there, its unit from the plan
    row = status_table([InstanceStatus(INSTANCE, record, None, None, None)]).splitlines()[1]
    assert "tiny-llama" in row and RUNTIME_UNIT in row
