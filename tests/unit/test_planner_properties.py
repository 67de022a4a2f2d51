"""Properties of `plan` over generated instances and requests (hypothesis).

- never two services on one port;
- when `fits`, every need is within what the plan says is available;
- more free memory (GPU, RAM, disk) never turns a fit into a non-fit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.manifest import Manifest
from asoba_deploy.core.planner import Plan, plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sparse_models import (
    SEED_MODELS,
    decoder_tensors,
    manifest_from_tensors,
    seed_manifest,
)

GIB = 1 << 30
MIB = 1 << 20
POLICY = Policy()
SMALL_DENSE: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 1536,
    "intermediate_size": 4096,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_hidden_layers": 28,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
MODELS = [*SEED_MODELS, "small-dense"]


@cache
def manifest(name: str) -> Manifest:
    if name == "small-dense":
        return manifest_from_tensors(name, SMALL_DENSE, decoder_tensors(SMALL_DENSE))
    return seed_manifest(name)


PORTS = st.sampled_from([22, 8000, 8001, 8002, 9000])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], DeployRequest]:
    has_gpu = draw(st.integers(0, 4)) > 0
    gpu_total = draw(st.integers(4 * 1024, 96 * 1024)) * MIB if has_gpu else 0
    flux_active = draw(st.booleans())
    flux_gpu = draw(st.integers(0, gpu_total)) if flux_active and has_gpu else 0
    runtime_active = draw(st.booleans())
    runtime_gpu = draw(st.integers(0, gpu_total - flux_gpu)) if runtime_active and has_gpu else 0
    other_gpu = draw(st.integers(0, gpu_total - flux_gpu - runtime_gpu)) if has_gpu else 0
    ram_total = draw(st.integers(8, 256)) * GIB
    flux_rss = draw(st.integers(0, ram_total // 2)) if flux_active else 0
    runtime_rss = draw(st.integers(0, ram_total // 4)) if runtime_active else 0
    other_rss = draw(st.integers(0, ram_total - flux_rss - runtime_rss))
    flux_port = draw(st.one_of(st.none(), PORTS))
    runtime_port = draw(st.one_of(st.none(), PORTS))
    services = [
        {
            "unit": "flux-api.service",
            "state": "active" if flux_active else "inactive",
            "rss_bytes": flux_rss,
            "gpu_memory_bytes": flux_gpu,
            "port": flux_port if flux_active else None,
        },
        {
            "unit": "asoba-inference.service",
            "state": "active" if runtime_active else "inactive",
            "rss_bytes": runtime_rss,
            "gpu_memory_bytes": runtime_gpu,
            "port": runtime_port if runtime_active else None,
        },
    ]
    if draw(st.booleans()):
        services.append(
            {
                "unit": "other.service",
                "state": "active",
                "rss_bytes": 0,
                "gpu_memory_bytes": 0,
                "port": draw(PORTS),
            }
        )
    listening = sorted(
        {p for s in services if s["state"] == "active" and s["port"] for p in [s["port"]]}
        | set(draw(st.lists(PORTS, max_size=3)))
    )
    snapshot = {
        "hostname": "h",
        "collected_at": datetime(2025, 8, 6, tzinfo=UTC),
        "cpus": 16,
        "ram_total_bytes": ram_total,
        "ram_available_bytes": ram_total - flux_rss - runtime_rss - other_rss,
        "gpus": [
            {
                "index": 0,
                "name": "GPU",
                "memory_total_bytes": gpu_total,
                "memory_used_bytes": flux_gpu + runtime_gpu + other_gpu,
            }
        ]
        if has_gpu
        else [],
        "services": services,
        "listening_ports": listening,
        "models_root": "/opt/models",
        "disk_free_bytes": draw(st.integers(0, 512)) * GIB,
        "cached_models": [],
    }
    request = DeployRequest(
        model=draw(st.sampled_from(MODELS)),
        force_quantize=draw(st.booleans()),
        allow_stop_flux=draw(st.booleans()),
        port=draw(st.one_of(st.none(), PORTS.filter(lambda p: p >= 1024))),
        context_tokens=draw(st.sampled_from([256, 2048, 4096, 16384, 65536])),
    )
    return snapshot, request


def run(snapshot: dict[str, Any], request: DeployRequest) -> Plan:
    assert request.model is not None
    return plan(manifest(request.model), InstanceSnapshot.model_validate(snapshot), request, POLICY)


def ports_in_use_after(snapshot: dict[str, Any], result: Plan) -> set[int]:
    """Ports held once the plan ran, computed from the snapshot independently of the planner:
    ports of active services that stay, and listening ports no service accounts for."""
    leaving = set(result.stop_services) | {POLICY.runtime_unit}
    service_ports: set[int] = set()
    held: set[int] = set()
    for service in snapshot["services"]:
        port = service["port"] or (POLICY.replace_port if service["unit"] == POLICY.flux_unit else None)
        if port is None or service["state"] != "active":
            continue
        service_ports.add(port)
        if service["unit"] not in leaving:
            held.add(port)
    return held | (set(snapshot["listening_ports"]) - service_ports)


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenarios())
def test_never_two_services_on_one_port(scenario: tuple[dict[str, Any], DeployRequest]) -> None:
    snapshot, request = scenario
    result = run(snapshot, request)
    if result.fits:
        assert result.port not in ports_in_use_after(snapshot, result)
        flux = snapshot["services"][0]
        if flux["state"] == "active" and POLICY.flux_unit not in result.stop_services:
            assert result.port != (flux["port"] or POLICY.replace_port)


@SETTINGS
@given(scenarios())
def test_needs_within_what_is_available_when_fits(scenario: tuple[dict[str, Any], DeployRequest]) -> None:
    snapshot, request = scenario
    result = run(snapshot, request)
    assert result.gpu.need_bytes == sum(result.gpu.breakdown.values())
    assert result.ram.need_bytes == sum(result.ram.breakdown.values())
    assert result.fits == (not result.shortfalls)
    if result.fits:
        assert snapshot["gpus"], "no GPU never fits"
        assert result.gpu.need_bytes <= result.gpu.available_bytes <= result.gpu.total_bytes
        assert result.ram.need_bytes <= result.ram.available_bytes <= result.ram.total_bytes
        assert result.ram.need_bytes <= POLICY.runtime_memory_max_bytes
        assert result.disk.needed_bytes + result.disk.reserve_bytes <= result.disk.free_bytes
        assert result.gpu.free_after_bytes >= 0 and result.ram.free_after_bytes >= 0
        if request.force_quantize and manifest(result.model).quantization is None:
            assert result.quantization == "bnb-4bit"
    else:
        assert result.shortfalls


@SETTINGS
@given(
    scenarios(),
    st.integers(0, 64 * 1024),
    st.integers(0, 128),
    st.integers(0, 512),
    st.floats(0, 1),
)
def test_more_free_memory_never_breaks_a_fit(
    scenario: tuple[dict[str, Any], DeployRequest],
    more_gpu_mib: int,
    more_ram_gib: int,
    more_disk_gib: int,
    less_other_gpu: float,
) -> None:
    snapshot, request = scenario
    before = run(snapshot, request)
    richer = {**snapshot}
    if snapshot["gpus"]:
        gpu = dict(snapshot["gpus"][0])
        gpu["memory_total_bytes"] += more_gpu_mib * MIB
        # Free some of what no service accounts for (other processes' GPU memory).
        accounted = sum(s["gpu_memory_bytes"] for s in snapshot["services"])
        unaccounted = gpu["memory_used_bytes"] - accounted
        gpu["memory_used_bytes"] -= int(unaccounted * less_other_gpu)
        richer["gpus"] = [gpu]
    richer["ram_total_bytes"] = snapshot["ram_total_bytes"] + more_ram_gib * GIB
    richer["ram_available_bytes"] = snapshot["ram_available_bytes"] + more_ram_gib * GIB
    richer["disk_free_bytes"] = snapshot["disk_free_bytes"] + more_disk_gib * GIB
    after = run(richer, request)
    if before.fits:
        assert after.fits, after.shortfalls


@SETTINGS
@given(scenarios())
def test_plan_is_pure_and_round_trips(scenario: tuple[dict[str, Any], DeployRequest]) -> None:
    snapshot, request = scenario
    first = run(snapshot, request)
    assert run(snapshot, request) == first
    assert Plan.model_validate(first.model_dump(mode="json")) == first
