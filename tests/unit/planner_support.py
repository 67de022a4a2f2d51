"""Shared data of the planner tests: the seed's instance as a snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from asoba_deploy.core.snapshot import InstanceSnapshot

GIB = 1 << 30
MIB = 1 << 20

# The seed's g5.4xlarge: 62 GiB RAM (free -g), 16 CPUs, an A10G reporting 23,028 MiB, and
# Flux on port 8000 using 54.8 % of RAM (34.0 GiB) with 26 GiB available.
A10G_TOTAL = 23028 * MIB
FLUX_RSS = int(0.548 * 62 * GIB)
FLUX_GPU = 12 * GIB
OTHER_GPU = 300 * MIB  # Xorg & co: what stays on the GPU after Flux stops


def seed_snapshot(**overrides: Any) -> InstanceSnapshot:
    """The seed's instance with Flux running; keyword overrides replace top-level fields."""
    data: dict[str, Any] = {
        "hostname": "ip-172-31-17-67",
        "collected_at": datetime(2025, 8, 6, 6, 59, 31, tzinfo=UTC),
        "cpus": 16,
        "ram_total_bytes": 62 * GIB,
        "ram_available_bytes": 26 * GIB,
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA A10G",
                "memory_total_bytes": A10G_TOTAL,
                "memory_used_bytes": FLUX_GPU + OTHER_GPU,
            }
        ],
        "services": [
            {
                "unit": "flux-api.service",
                "state": "active",
                "main_pid": 4242,
                "rss_bytes": FLUX_RSS,
                "gpu_memory_bytes": FLUX_GPU,
                "port": 8000,
            },
            {"unit": "asoba-inference.service", "state": "inactive", "rss_bytes": 0, "gpu_memory_bytes": 0},
        ],
        "listening_ports": [22, 8000],
        "models_root": "/opt/models",
        "disk_free_bytes": 400 * GIB,
        "cached_models": [],
    }
    data.update(overrides)
    return InstanceSnapshot.model_validate(data)


def flux_stopped_snapshot(**overrides: Any) -> InstanceSnapshot:
    """The seed's instance with Flux inactive (its memory free)."""
    base: dict[str, Any] = {
        "ram_available_bytes": 26 * GIB + FLUX_RSS,
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA A10G",
                "memory_total_bytes": A10G_TOTAL,
                "memory_used_bytes": OTHER_GPU,
            }
        ],
        "services": [
            {"unit": "flux-api.service", "state": "inactive", "rss_bytes": 0, "gpu_memory_bytes": 0}
        ],
        "listening_ports": [22],
    }
    base.update(overrides)
    return seed_snapshot(**base)
