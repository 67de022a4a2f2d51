"""Prometheus /metrics: request counts, tokens, latencies, the batch, GPU memory.

A registry of our own (not the process-wide default) so each app has its own counters. Engine
state and GPU memory are read at scrape time by a collector; per-request figures are recorded
when a request ends, the same way for every engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from instance_runtime.generation import GenerationResult
from instance_runtime.gpu import GpuMonitor
from instance_runtime.serving import EngineStats, RequestHandle

PREFIX = "asoba_inference"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from a fast first token on a GPU to a long generation on a CPU.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class _LiveCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None], gpu: GpuMonitor) -> None:
        self._stats = stats
        self._gpu = gpu

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats() or EngineStats(running=0, waiting=0)
        yield GaugeMetricFamily(f"{PREFIX}_requests_running", "Requests in the running batch.", stats.running)
        yield GaugeMetricFamily(
            f"{PREFIX}_requests_waiting", "Requests admitted and waiting for the batch.", stats.waiting
        )
        yield CounterMetricFamily(f"{PREFIX}_decode_steps", "Decode forwards over the batch.", stats.steps)
        yield CounterMetricFamily(
            f"{PREFIX}_decode_rows",
            "Sum of batch sizes over decode forwards (rate over decode_steps: mean batch).",
            stats.row_steps,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_batch_size_peak", "Largest batch decoded since start.", stats.peak_batch_size
        )
        used, total = self._gpu.memory_mib()
        if used is not None and total is not None:  # only where NVML sees a GPU
            yield GaugeMetricFamily(
                f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use (all processes).", used * 2**20
            )
            yield GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "GPU memory.", total * 2**20)


class ServiceMetrics:
    def __init__(self, stats: Callable[[], EngineStats | None], gpu: GpuMonitor) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Finished requests by finish reason (abort: client gone or shutdown).",
            ["finish_reason"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of finished requests.", registry=self.registry
        )
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "Tokens generated for finished requests.", registry=self.registry
        )
        self.failures = Counter(f"{PREFIX}_request_failures", "Requests that failed.", registry=self.registry)
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "From admission to the first generated token.",
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds",
            "From admission to the last token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(stats, gpu))

    def observe(self, handle: RequestHandle) -> None:
        """Record a request that has ended (the handle's done callback)."""
        if handle.done.cancelled() or handle.done.exception() is not None:
            self.failures.inc()
            return
        result: GenerationResult = handle.done.result()
        self.requests.labels(result.finish_reason).inc()
        self.prompt_tokens.inc(result.prompt_tokens)
        self.generation_tokens.inc(result.completion_tokens)
        if handle.first_token_at is not None:
            self.ttft.observe(handle.first_token_at - handle.submitted_at)
        if handle.finished_at is not None and result.finish_reason != "abort":
            self.latency.observe(handle.finished_at - handle.submitted_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)
