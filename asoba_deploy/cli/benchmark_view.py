"""The benchmark's lines in the CLI's output (a deployment's record, `deploy-model bench`)."""

from __future__ import annotations

from asoba_deploy.core.benchmark import BenchmarkResult


def _number(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f} {unit}"


def benchmark_lines(result: BenchmarkResult | None) -> str:
    """The benchmark as two or three lines (a record's `benchmark` row, `deploy-model bench`)."""
    if result is None:
        return ""
    if not result.ok:
        return f"failed: {result.error or 'no reason given'} (the deployment stands)"
    lines = [
        f"time to first token {_number(result.ttft_s, 's', 3)}, "
        f"decode {_number(result.decode_tokens_per_s, 'tok/s')} (1 request)",
        f"{result.concurrency or '?'} at once: {_number(result.concurrent_tokens_per_s, 'tok/s')} "
        f"(first token after {_number(result.concurrent_ttft_s, 's', 3)}, median)",
    ]
    load = f"load {_number(result.load_s, 's')}" + (f" ({result.load_from})" if result.load_from else "")
    if result.peak_gpu_memory_mib is not None:
        total = f" of {result.gpu_memory_total_mib:,} MiB" if result.gpu_memory_total_mib else ""
        gpu = f"peak GPU memory {result.peak_gpu_memory_mib:,} MiB{total} (all processes)"
    else:
        gpu = f"peak GPU memory n/a: {result.gpu_memory_note or 'not reported'}"
    lines.append(f"{load}; {gpu}")
    return "\n".join(lines)
