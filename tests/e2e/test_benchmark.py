"""The benchmark after a deployment, `deploy-model bench` and `deploy-model cost`, through the
synthesized state machine, the real benchmark document and the runtime serving the tiny model."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from asoba_deploy.core.ledger import LedgerRecord, recent
from local.bucket import upload_model
from local.executions import run_execution, wait_for_execution
from tests.conftest import Ports
from tests.e2e.helpers import get_json
from tests.e2e.test_cli import cli  # noqa: F401  (the fixture)

RUNTIME = "asoba-inference.service"


@pytest.fixture(scope="module")
def bench_model(local_cloud: Any, model_bucket: str, tiny_model: Path) -> str:
    """The tiny model under a name of its own: its sync here leaves the other tests' cache cold."""
    upload_model(local_cloud.client("s3"), model_bucket, "tiny-bench", tiny_model)
    return "tiny-bench"


def ledger(local_cloud: Any, deployed_stack: Any, instance_id: str) -> list[LedgerRecord]:
    return recent(
        local_cloud.client("dynamodb"), deployed_stack.outputs["LedgerTable"], instance_id, limit=10
    )


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_a_deploy_is_benchmarked_then_bench_reruns_it_and_cost_prices_its_hours(
    sfn: Any,
    machine_arn: str,
    instance: Any,
    bench_model: str,
    ports: Ports,
    local_cloud: Any,
    deployed_stack: Any,
    cli: Any,  # noqa: F811  (the fixture)
) -> None:
    # When the tiny model is deployed
    result = run_execution(sfn, machine_arn, {"model": bench_model}, timeout=600)

    # Then it ends Deployed, the benchmark having run after the change, outside its rollback
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    entered = result.states_entered
    assert entered.index("HealthCheck.Result") < entered.index("Measure") < entered.index("Benchmark")
    assert entered.index("Benchmark.Result") < entered.index("RecordDeployment")
    # and the output (the ledger record) carries what it measured on the real tiny model
    measured = result.output["benchmark"]
    assert measured["ok"] is True, measured
    assert measured["ttft_s"] > 0 and measured["decode_tokens_per_s"] > 0
    assert measured["concurrency"] == 4 and measured["concurrent_tokens_per_s"] > 0
    assert measured["load_s"] > 0
    assert measured["peak_gpu_memory_mib"] is None and "no GPU" in measured["gpu_memory_note"]
    stored = ledger(local_cloud, deployed_stack, instance.instance_id)[0]
    assert stored.execution == result.arn and stored.benchmark is not None
    assert stored.benchmark.model_dump(mode="json") == measured
    print("benchmark on deploy:", measured)

    # Given a user's request of 5 tokens
    code, answer = get_json(
        f"http://127.0.0.1:{ports.coexist}/v1/completions",
        {"model": bench_model, "prompt": "hello", "max_tokens": 5, "ignore_eos": True},
    )
    assert code == 200 and answer["usage"]["completion_tokens"] == 5

    # When `deploy-model bench` reruns it
    bench = cli("bench", bench_model, "--instance-id", instance.instance_id)

    # Then it prints the measurement and the ledger keeps it beside the deployment, which stays
    assert bench.code == 0, bench.err
    assert f"Benchmark of {bench_model} on {instance.instance_id}" in bench.out
    assert re.search(r"time to first token \d+\.\d{3} s, decode [\d,]+\.\d tok/s", bench.out), bench.out
    assert "peak GPU memory n/a: " in bench.out
    rerun = ledger(local_cloud, deployed_stack, instance.instance_id)[0]
    assert rerun.outcome == "benchmarked" and rerun.benchmark is not None and rerun.benchmark.ok
    assert rerun.benchmark.ttft_s and rerun.benchmark.ttft_s > 0
    # the runtime's counter, read by the benchmark: the deploy's benchmark and the user's 5 tokens
    assert stored.benchmark.generation_tokens_after is not None
    assert rerun.benchmark.generation_tokens_before == stored.benchmark.generation_tokens_after + 5
    status = cli("status")
    assert status.code == 0 and bench_model in status.out
    assert cli("bench", "some-other-model", "--instance-id", instance.instance_id).code == 2

    # When the cost is asked for, as JSON and as a table
    priced = cli("cost", "--json", "--instance-id", instance.instance_id)
    table = cli("cost", "--since", "1d", "--instance-id", instance.instance_id)

    # Then its hours run from the ledger's healthy time to now, at the recorded price
    assert priced.code == 0, priced.err
    body = json.loads(priced.out)
    (deployment,) = [d for d in body["deployments"] if d["execution"] == result.arn.rsplit(":", 1)[-1]]
    assert stored.time_to_healthy is not None and stored.time_to_healthy.actual_s is not None
    healthy = parse(stored.started_at) + timedelta(seconds=stored.time_to_healthy.actual_s)
    assert parse(deployment["from"]) == healthy and deployment["ongoing"] is True
    assert deployment["to"] == body["until"]
    hours = (parse(body["until"]) - healthy).total_seconds() / 3600
    assert deployment["hours"] == pytest.approx(hours, abs=1e-6)
    assert stored.instance_type == "g5.4xlarge" and stored.cost_per_hour_usd == 1.624
    assert deployment["usd_per_hour"] == 1.624
    assert deployment["usd"] == pytest.approx(hours * 1.624, abs=1e-6)
    # and the tokens served are the user's 5, the benchmarks' own left out
    assert deployment["tokens"] == 5
    assert deployment["usd_per_million_tokens"] == pytest.approx(
        (parse(deployment["tokens_as_of"]) - healthy).total_seconds() / 3600 * 1.624 / 5 * 1e6, rel=1e-4
    )
    assert table.code == 0, table.err
    assert re.search(
        rf"^  {re.escape(bench_model)}\s+\d+\s+\d+\.\d{{3}}\s+\$\d+\.\d\d\s+5\s+\$", table.out, re.M
    ), table.out


def test_no_benchmark_skips_it(
    sfn: Any,
    instance: Any,
    bench_model: str,
    local_cloud: Any,
    cli: Any,  # noqa: F811  (the fixture)
) -> None:
    # When a deploy is asked for without the benchmark (the CLI sends "benchmark": false)
    run = cli(bench_model, "--no-benchmark", "--instance-id", instance.instance_id, "--json")

    # Then it is skipped: no Benchmark state, no benchmark command, none in the record
    assert run.code == 0, run.err
    record = json.loads(run.out)
    assert record["outcome"] == "succeeded" and record["benchmark"] is None
    result = wait_for_execution(sfn, record["execution"])
    assert json.loads(sfn.describe_execution(executionArn=result.arn)["input"])["benchmark"] is False
    assert "Measure.Skipped" in result.states_entered and "Benchmark" not in result.states_entered
    assert not re.search(r"done\s+benchmark\b", run.err)
    name = record["execution"].rsplit(":", 1)[-1]
    listed = local_cloud.client("ssm").list_commands(InstanceId=instance.instance_id)["Commands"]
    sent = {c["Comment"].split("#")[0] for c in listed if c.get("Comment", "").endswith(f" {name}")}
    assert "health-check" in sent and "benchmark" not in sent


def test_a_failed_benchmark_still_ends_the_deployment_healthy_with_the_failure_recorded(
    sfn: Any,
    machine_arn: str,
    instance: Any,
    tiny_model: Path,
    tmp_path: Path,
    local_cloud: Any,
    model_bucket: str,
    ports: Ports,
) -> None:
    # Given a model whose context (8 positions) is shorter than the benchmark's prompt: it loads
    # and turns healthy, and the runtime refuses the benchmark's requests
    short = tmp_path / "tiny-short-context"
    shutil.copytree(tiny_model, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 8
    (short / "config.json").write_text(json.dumps(config))
    upload_model(local_cloud.client("s3"), model_bucket, "tiny-short-context", short)

    result = run_execution(sfn, machine_arn, {"model": "tiny-short-context"}, timeout=600)

    # Then the deployment stands: Deployed, nothing rolled back, the runtime serving
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.output["outcome"] == "succeeded"
    assert "Measure.Failed" in result.states_entered
    assert "Rollback" not in result.states_entered
    code, status = get_json(f"http://127.0.0.1:{ports.coexist}/status")
    assert code == 200 and status["status"] == "healthy" and status["model"] == "tiny-short-context"
    # and the record says the benchmark failed, and why
    failed = result.output["benchmark"]
    assert failed["ok"] is False and failed["ttft_s"] is None
    assert failed["error"].startswith("BenchmarkFailed: ")
    assert "the context is 8 tokens" in failed["error"], failed
