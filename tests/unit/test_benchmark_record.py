"""What the ledger and CloudWatch get of a benchmark: the Record function's summary of the
document's result, and the metrics it publishes (names and dimension from core.metric_names)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from asoba_deploy.cli.commands import build_request
from asoba_deploy.core import metric_names
from asoba_deploy.core.benchmark import from_result, from_state
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.ledger import LedgerRecord
from asoba_deploy.core.state import ExecutionState, Failure
from lambdas.handlers import record as record_handler

MEASURED = {
    "ok": True,
    "ttft_s": 0.08,
    "decode_tokens_per_s": 13.1,
    "c1": {"tokens": 32, "seconds": 2.4, "tokens_per_s": 13.3},
    "concurrent": {
        "concurrency": 4,
        "tokens": 128,
        "seconds": 3.0,
        "tokens_per_s": 42.7,
        "ttft_s_median": 0.5,
    },
    "max_tokens": 32,
    "prompt_tokens": 46,
    "load_s": 9.8,
    "load_from": "disk",
    "peak_gpu_memory_mib": None,
    "gpu_memory_total_mib": None,
    "gpu_memory_note": "the service reports no GPU memory (no GPU seen by NVML on this instance)",
    "counters_before": {"generation": 0, "prompt": 0},
    "counters_after": {"generation": 162, "prompt": 276},
    "seconds": 5.8,
}


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    record_handler.metrics.clear_metrics()
    record_handler.metrics.namespace = metric_names.NAMESPACE
    yield record_handler.metrics
    record_handler.metrics.clear_metrics()


def ledger_record(benchmark: dict[str, Any]) -> LedgerRecord:
    return LedgerRecord(
        instance_id="i-0123456789abcdef0",
        record_key="k",
        execution="e",
        model="tiny",
        dry_run=False,
        outcome="succeeded",
        started_at="2026-12-01T00:00:00+00:00",
        finished_at="2026-12-01T00:01:00+00:00",
        instance_type="g5.4xlarge",
        cost_per_hour_usd=1.624,
        benchmark=from_result(benchmark, measured_at="2026-12-01T00:01:00+00:00"),
    )


def test_the_record_function_publishes_decode_rate_and_ttft_per_instance(metrics: Any) -> None:
    record_handler._publish_benchmark(ledger_record(MEASURED))

    emf = metrics.serialize_metric_set()
    (directive,) = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == metric_names.NAMESPACE
    # (in the Lambda, Powertools adds its `service` dimension: the function's id)
    assert metric_names.INSTANCE in directive["Dimensions"][0]
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units == {
        metric_names.BENCHMARK_DECODE_TOKENS_PER_SECOND: "Count/Second",
        metric_names.BENCHMARK_TTFT_SECONDS: "Seconds",
    }
    assert emf[metric_names.INSTANCE] == "i-0123456789abcdef0"
    assert emf[metric_names.BENCHMARK_DECODE_TOKENS_PER_SECOND] == [13.1]
    assert emf[metric_names.BENCHMARK_TTFT_SECONDS] == [0.08]


def test_a_failed_benchmark_publishes_nothing_and_is_recorded_with_its_reason(metrics: Any) -> None:
    record_handler._publish_benchmark(ledger_record({"ok": False, "error": "HTTP 422: too long"}))
    assert not metrics.metric_set

    state = ExecutionState(
        request=DeployRequest(model="tiny"),
        instance_id="i-0123456789abcdef0",
        benchmark_failure=Failure(
            Error="BenchmarkFailed",
            Cause='{"errorType": "BenchmarkFailed", "errorMessage": "benchmark failed on i-0: HTTP 422"}',
        ),
    )
    failed = from_state(state, measured_at="2026-12-01T00:01:00+00:00")
    assert failed is not None and (failed.ok, failed.error) == (
        False,
        "BenchmarkFailed: benchmark failed on i-0: HTTP 422",
    )
    skipped = ExecutionState(
        request=DeployRequest(model="tiny", benchmark=False), instance_id="i-0123456789abcdef0"
    )
    assert from_state(skipped, measured_at="x") is None


def test_no_benchmark_is_the_contract_field_false() -> None:
    assert build_request("tiny", benchmark=False) == {"model": "tiny", "benchmark": False}
    assert "benchmark" not in build_request("tiny")
    assert DeployRequest(model="tiny").benchmark is True
