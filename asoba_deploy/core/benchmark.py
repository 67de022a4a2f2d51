"""The benchmark after a deployment (ssm_documents/benchmark.yaml): what it is sent, and what the
ledger keeps of its result.

It runs once the health check passed, outside the change's rollback: a benchmark that fails is
recorded (`ok: false` with the error) and the deployment stands. `deploy-model bench` sends the
same document on demand against the deployment in place.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from asoba_deploy.core.settings import Settings
from asoba_deploy.core.state import ExecutionState

# The document's own deadline ends this long before the step's budget: the agent's kill margin
# (core.instance_step.AGENT_REPORT_MARGIN_SECONDS) and a few seconds to print the result line.
DEADLINE_MARGIN_SECONDS = 20
STEP_KEY = "benchmark"  # the registry step's key: $.steps.benchmark


def document_parameters(config: Settings, *, port: int, model: str) -> dict[str, str]:
    """The benchmark document's parameters for the runtime serving `model` on `port`."""
    budget = int(config.step_budgets.benchmark)
    settings = config.deploy.benchmark
    return {
        "Port": str(port),
        "ModelName": model,
        "MaxTokens": str(settings.max_tokens),
        "Concurrency": str(settings.concurrency),
        "DeadlineSeconds": str(max(1, budget - DEADLINE_MARGIN_SECONDS)),
    }


def benchmark_parameters(config: Settings, state: ExecutionState) -> dict[str, str]:
    """In the state machine: the runtime the plan just deployed."""
    if state.plan is None:
        raise ValueError("the benchmark needs the plan in $.plan")
    return document_parameters(config, port=state.plan.port, model=state.plan.deploy_model)


class BenchmarkResult(BaseModel):
    """What the ledger record and the execution output carry (`benchmark`). `ok: false` says the
    benchmark failed (`error`); the measured fields are then null."""

    model_config = ConfigDict(extra="ignore")

    ok: bool
    error: str | None = None
    measured_at: str | None = None  # ISO time the result was recorded
    ttft_s: float | None = None  # time to first token, concurrency 1 (after a warm-up)
    decode_tokens_per_s: float | None = None  # concurrency 1, after the first token
    concurrency: int | None = None
    concurrent_tokens_per_s: float | None = None  # all requests' tokens over the wall time
    concurrent_ttft_s: float | None = None  # median at that concurrency
    max_tokens: int | None = None
    prompt_tokens: int | None = None
    load_s: float | None = None  # the runtime's own load time (/status load.seconds)
    load_from: str | None = None
    peak_gpu_memory_mib: int | None = None  # what the runtime reported (all processes)
    gpu_memory_total_mib: int | None = None
    gpu_memory_note: str | None = None  # why peak_gpu_memory_mib is null
    # the runtime's /metrics generation-token counter when the benchmark began and ended
    generation_tokens_before: int | None = None
    generation_tokens_after: int | None = None
    seconds: float | None = None  # the benchmark's own run time on the instance

    @property
    def own_tokens(self) -> int:
        """Tokens the benchmark itself generated (its warm-up too), by the runtime's counter."""
        if self.generation_tokens_before is None or self.generation_tokens_after is None:
            return 0
        return max(0, self.generation_tokens_after - self.generation_tokens_before)


def _counter(counters: Any, kind: str) -> int | None:
    value = counters.get(kind) if isinstance(counters, dict) else None
    return int(value) if isinstance(value, int | float) else None


def from_result(result: dict[str, Any], *, measured_at: str) -> BenchmarkResult:
    """The ledger's summary of the document's result line."""
    if not result.get("ok"):
        return failed(
            str(result.get("error") or "the benchmark reported no success"), measured_at=measured_at
        )
    concurrent = result.get("concurrent")
    concurrent = concurrent if isinstance(concurrent, dict) else {}
    return BenchmarkResult(
        ok=True,
        measured_at=measured_at,
        ttft_s=result.get("ttft_s"),
        decode_tokens_per_s=result.get("decode_tokens_per_s"),
        concurrency=concurrent.get("concurrency"),
        concurrent_tokens_per_s=concurrent.get("tokens_per_s"),
        concurrent_ttft_s=concurrent.get("ttft_s_median"),
        max_tokens=result.get("max_tokens"),
        prompt_tokens=result.get("prompt_tokens"),
        load_s=result.get("load_s"),
        load_from=result.get("load_from"),
        peak_gpu_memory_mib=result.get("peak_gpu_memory_mib"),
        gpu_memory_total_mib=result.get("gpu_memory_total_mib"),
        gpu_memory_note=result.get("gpu_memory_note"),
        generation_tokens_before=_counter(result.get("counters_before"), "generation"),
        generation_tokens_after=_counter(result.get("counters_after"), "generation"),
        seconds=result.get("seconds"),
    )


def failed(error: str, *, measured_at: str) -> BenchmarkResult:
    return BenchmarkResult(ok=False, error=error[:1000], measured_at=measured_at)


def from_state(state: ExecutionState, *, measured_at: str) -> BenchmarkResult | None:
    """The execution's benchmark: its result, its failure (the Catch's $.benchmark_failure), or
    None where none ran (skipped by `"benchmark": false`, a dry run, a failed deployment)."""
    if state.benchmark_failure is not None:
        failure = state.benchmark_failure
        return failed(f"{failure.Error}: {_cause(failure.Cause)}", measured_at=measured_at)
    result = state.result(STEP_KEY)
    if result is None:
        return None
    return from_result(result, measured_at=measured_at)


def _cause(cause: str) -> str:
    """A Lambda error's cause is its JSON payload: the message is what the ledger keeps."""
    import json

    try:
        payload = json.loads(cause)
    except ValueError:
        return cause
    return str(payload.get("errorMessage") or cause) if isinstance(payload, dict) else cause


def metric_values(result: BenchmarkResult) -> dict[str, float]:
    """The CloudWatch metrics of a successful benchmark (core.metric_names): what was measured."""
    from asoba_deploy.core import metric_names

    if not result.ok:
        return {}
    values: dict[str, float] = {}
    if result.decode_tokens_per_s is not None:
        values[metric_names.BENCHMARK_DECODE_TOKENS_PER_SECOND] = float(result.decode_tokens_per_s)
    if result.ttft_s is not None:
        values[metric_names.BENCHMARK_TTFT_SECONDS] = float(result.ttft_s)
    return values
