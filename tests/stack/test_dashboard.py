"""The dashboard reads what the functions emit: every metric a widget (or the validation alarm)
names is one the functions' own publishing code emits, with the same namespace, name and
dimensions (the `service` dimension from the function's POWERTOOLS_SERVICE_NAME in the
template). The emitted set is captured from the handlers' publishing paths, not listed here."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from asoba_deploy.core import idle
from asoba_deploy.core.benchmark import BenchmarkResult
from asoba_deploy.core.ledger import LedgerRecord, TimeToHealthy
from asoba_deploy.core.steps import STEPS
from local.stack import Synthesized

INSTANCE = "i-0123456789abcdef0"  # cdk.json's instance
MetricKey = tuple[str, str, frozenset[tuple[str, str]]]  # namespace, name, dimensions


def _resources(synth: Synthesized, kind: str) -> dict[str, Any]:
    return {k: v for k, v in synth.template["Resources"].items() if v["Type"] == kind}


def _resolve(value: Any) -> str:
    """A dashboard body: Fn::Join of strings and pseudo-parameter Refs."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_resolve(part) for part in parts)
    if isinstance(value, dict) and "Ref" in value:
        pseudo = {"AWS::Region": "us-west-2", "AWS::AccountId": "123456789012"}
        return pseudo.get(value["Ref"], str(value["Ref"]))
    raise AssertionError(f"unexpected value in the dashboard body: {value!r}")


def _environment(synth: Synthesized, step_name: str) -> dict[str, str]:
    function_id = STEPS[step_name].function_id
    for function in _resources(synth, "AWS::Lambda::Function").values():
        variables = function["Properties"].get("Environment", {}).get("Variables", {})
        if variables.get("POWERTOOLS_SERVICE_NAME") == function_id:
            return {k: v for k, v in variables.items() if isinstance(v, str)}
    raise AssertionError(f"no function for {step_name} in the template")


def _emitted(
    synth: Synthesized,
    step_name: str,
    module_name: str,
    publish: Callable[[ModuleType], None],
    monkeypatch: pytest.MonkeyPatch,
) -> set[MetricKey]:
    """What the step's handler emits through `publish`, as its function is configured."""
    environment = _environment(synth, step_name)
    for key in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"):
        monkeypatch.setenv(key, environment[key])
    module = importlib.reload(importlib.import_module(module_name))
    try:
        publish(module)
        record = module.metrics.serialize_metric_set()
    finally:
        module.metrics.clear_metrics()
    found: set[MetricKey] = set()
    for definition in record["_aws"]["CloudWatchMetrics"]:
        for dimensions in definition["Dimensions"]:
            dims = frozenset((name, str(record[name])) for name in dimensions)
            for metric in definition["Metrics"]:
                found.add((definition["Namespace"], metric["Name"], dims))
    return found


def _check_activity(module: ModuleType) -> None:
    seen = idle.observe(None, idle.RequestCounters(served=3, in_flight=0), instance_id=INSTANCE, now=1_000.0)
    verdict = idle.decide(seen.activity, 30, now=1_000.0)
    module._publish(INSTANCE, idle.activity_metrics(seen, verdict, stopped=False, hourly_price_usd=1.624))


def _check_report(module: ModuleType) -> None:
    from asoba_deploy.core.check_instance import metrics_for

    module._publish(INSTANCE, metrics_for({"ok": True, "checks": [], "gpu_free_bytes": 1}, online=True))


def _check_stopped(module: ModuleType) -> None:
    from asoba_deploy.core import metric_names

    module._publish(INSTANCE, {metric_names.INSTANCE_STOPPED: 1.0, metric_names.INSTANCE_ONLINE: 0.0})


def _record(outcome: str) -> LedgerRecord:
    return LedgerRecord(
        instance_id=INSTANCE,
        record_key="2026-12-01T10:00:00+00:00#deploy",
        execution="arn:aws:states:us-west-2:123456789012:execution:m:deploy",
        model="tiny-llama",
        dry_run=False,
        outcome=outcome,  # type: ignore[arg-type]
        started_at="2026-12-01T10:00:00+00:00",
        finished_at="2026-12-01T10:01:30+00:00",
        instance_type="g5.4xlarge",
        cost_per_hour_usd=1.624,
        time_to_healthy=TimeToHealthy(actual_s=75.0) if outcome == "succeeded" else None,
    )


def _record_publish(module: ModuleType) -> None:
    for outcome in ("succeeded", "failed"):
        record = _record(outcome)
        module._publish_deployment(record)
    measured = _record("succeeded")
    measured.benchmark = BenchmarkResult.model_validate(
        {"ok": True, "decode_tokens_per_s": 40.0, "ttft_s": 0.05, "measured_at": "2026-12-01T10:01:20+00:00"}
    )
    module._publish_benchmark(measured)


def _read(synth: Synthesized) -> set[MetricKey]:
    """Every metric the dashboard's widgets and the alarms read."""
    read: set[MetricKey] = set()
    (dashboard,) = _resources(synth, "AWS::CloudWatch::Dashboard").values()
    body = json.loads(_resolve(dashboard["Properties"]["DashboardBody"]))
    for widget in body["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            if not isinstance(row[0], str):
                continue  # a math expression over the metrics of the other rows
            namespace, name, *rest = row
            pairs = [part for part in rest if isinstance(part, str)]
            read.add((namespace, name, frozenset(zip(pairs[::2], pairs[1::2], strict=True))))
    for alarm in _resources(synth, "AWS::CloudWatch::Alarm").values():
        for query in alarm["Properties"].get("Metrics", []):
            if "MetricStat" in query:
                metric = query["MetricStat"]["Metric"]
                dims = frozenset((d["Name"], d["Value"]) for d in metric["Dimensions"])
                read.add((metric["Namespace"], metric["MetricName"], dims))
    return read


def test_every_widget_and_alarm_reads_an_emitted_metric(
    synth: Synthesized, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given what the check and record functions emit, configured as the template configures them
    emitted: set[MetricKey] = set()
    for publish in (_check_report, _check_stopped, _check_activity):
        emitted |= _emitted(synth, "check-instance", "lambdas.handlers.check_instance", publish, monkeypatch)
    emitted |= _emitted(synth, "record", "lambdas.handlers.record", _record_publish, monkeypatch)
    # When the dashboard and the alarms are read
    read = _read(synth)
    # Then each metric they read is emitted (names, namespace and dimensions alike)
    assert read, "the dashboard reads no metric"
    assert read - emitted == set()
    # and the dashboard covers what an operator looks for
    names = {name for _, name, _ in read}
    assert {
        "ValidationPassed",
        "InstanceStopped",
        "DeploymentSucceeded",
        "DeploymentFailed",
        "DeploymentSeconds",
        "TimeToHealthySeconds",
        "RequestsServed",
        "InstanceHourlyPriceUsd",
        "BenchmarkDecodeTokensPerSecond",
    } <= names


def test_cost_per_day_counts_each_check_as_one_validation_interval(synth: Synthesized) -> None:
    (dashboard,) = _resources(synth, "AWS::CloudWatch::Dashboard").values()
    body = json.loads(_resolve(dashboard["Properties"]["DashboardBody"]))
    expressions = [
        row[0]["expression"]
        for widget in body["widgets"]
        for row in widget.get("properties", {}).get("metrics", [])
        if isinstance(row[0], dict) and "expression" in row[0]
    ]
    # cdk.json's validation_rate_minutes is 60: each hourly price datum is one hour of running
    assert expressions == ["price * 1"]
