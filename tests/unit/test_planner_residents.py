"""Resident models (planner rule 5, core.residents): where a new model runs among the served ones.

Given the seed's instance (g5.4xlarge: one A10G of 23,028 MiB, 62 GiB RAM, Flux on 8000) with
runtime units already serving models (the primary `asoba-inference.service` and residents
`asoba-inference@<model>.service`, each with its measured GPU memory, RSS, port and last use),
when the planner plans a deployment with `resident` "replace" or "keep" (and `evict` "lru"),
then the plan names the unit and port the model runs in, counts the memory of every runtime unit
that keeps serving, and names (or evicts) the least recently used residents that must make room.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from asoba_deploy.core.catalog import builtin_catalog
from asoba_deploy.core.contracts import DeployRequest, parse_request
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.manifest import read_manifest
from asoba_deploy.core.planner import Plan, plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import BotoS3Reader
from asoba_deploy.core.snapshot import InstanceSnapshot
from tests.unit.conftest import SeedBucket
from tests.unit.planner_support import A10G_TOTAL, FLUX_GPU, FLUX_RSS, GIB, MIB, OTHER_GPU, seed_snapshot
from tests.unit.test_planner_golden import plan_from_bucket

PRIMARY = "asoba-inference.service"
FLUX = "flux-api.service"
# What the seed's instance keeps in RAM besides Flux and the runtime units (62 - 26 - Flux's RSS).
BASE_RAM = 62 * GIB - 26 * GIB - FLUX_RSS

# Measured footprints of served models (the planner's own estimates of them, rounded).
SMALL_GPU, SMALL_RSS = 900 * MIB, 2300 * MIB  # a mistral tier-1 model
AWQ_GPU, AWQ_RSS = 11_400 * MIB, 6 * GIB  # qwen3-14b-awq
DEEPSEEK_4BIT_GPU, DEEPSEEK_4BIT_RSS = 7_200 * MIB, 6 * GIB  # deepseek-r1-8b at bnb-4bit


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 8, day, hour, minute, tzinfo=UTC)


def runtime(
    model: str,
    port: int,
    gpu: int,
    rss: int,
    *,
    unit: str | None = None,
    since: datetime | None = None,
    last_used_at: datetime | None = None,
) -> dict[str, Any]:
    """An active runtime unit as collect-resources reports it (a resident unless `unit` says)."""
    return {
        "unit": unit or f"asoba-inference@{model}.service",
        "state": "active",
        "main_pid": 5000 + port,
        "rss_bytes": rss,
        "gpu_memory_bytes": gpu,
        "port": port,
        "model": model,
        "engine": "transformers",
        "since": since,
        "last_used_at": last_used_at,
    }


def primary(model: str, port: int, gpu: int, rss: int, **when: Any) -> dict[str, Any]:
    return runtime(model, port, gpu, rss, unit=PRIMARY, **when)


def instance(
    *units: dict[str, Any], flux: bool = True, other_listeners: tuple[int, ...] = ()
) -> InstanceSnapshot:
    """The seed's instance with these runtime units active: the GPU's used memory, the available
    RAM and the listening sockets agree with what every service reports."""
    flux_unit: dict[str, Any] = (
        {"unit": FLUX, "state": "active", "main_pid": 4242, "rss_bytes": FLUX_RSS}
        | {"gpu_memory_bytes": FLUX_GPU, "port": 8000}
        if flux
        else {"unit": FLUX, "state": "inactive", "rss_bytes": 0, "gpu_memory_bytes": 0}
    )
    services: list[dict[str, Any]] = [flux_unit, *units]
    if not any(u["unit"] == PRIMARY for u in units):
        services.append({"unit": PRIMARY, "state": "inactive", "rss_bytes": 0, "gpu_memory_bytes": 0})
    active = [s for s in services if s["state"] == "active"]
    return seed_snapshot(
        ram_available_bytes=62 * GIB - BASE_RAM - sum(s["rss_bytes"] for s in active),
        gpus=[
            {
                "index": 0,
                "name": "NVIDIA A10G",
                "memory_total_bytes": A10G_TOTAL,
                "memory_used_bytes": OTHER_GPU + sum(s["gpu_memory_bytes"] for s in active),
            }
        ],
        services=services,
        listening_ports=sorted({22, *(s["port"] for s in active), *other_listeners}),
    )


def residents(result: Plan) -> list[tuple[str | None, str, int | None]]:
    return [(r.model, r.unit, r.port) for r in result.resident_models]


# The primary serves mistral_policy_analysis beside Flux (the seed's coexist port).
POLICY_PRIMARY = primary(
    "mistral_policy_analysis", 8001, SMALL_GPU, SMALL_RSS, since=at(6, 5), last_used_at=at(6, 6, 58)
)


def test_keep_runs_the_model_in_its_own_unit_on_8002_counting_the_primary(seed_bucket: SeedBucket) -> None:
    # Given Flux on 8000 and the primary serving mistral_policy_analysis on 8001
    snapshot = instance(POLICY_PRIMARY)

    # When mistral_iac_generation is planned with "keep", and with the default "replace"
    kept, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", snapshot, resident="keep")
    replaced, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", snapshot, strategy="stop-start")

    # Then with keep it runs as a resident unit of its own on the first port above the seed's
    assert kept.fits, kept.shortfalls
    assert (kept.resident, kept.unit, kept.port) == (
        "keep",
        "asoba-inference@mistral_iac_generation.service",
        8002,
    )
    assert kept.endpoints.status == "http://localhost:8002/status"
    assert kept.action == "coexist" and kept.stop_services == []
    assert not kept.replaces_runtime
    assert residents(kept) == [("mistral_policy_analysis", PRIMARY, 8001)]
    assert any(
        "runs as asoba-inference@mistral_iac_generation.service on port 8002" in r for r in kept.reasons
    )
    # And the primary's measured memory stays counted: what is free after drops by exactly it
    assert kept.gpu.used_by_others_after_bytes == OTHER_GPU + FLUX_GPU + SMALL_GPU
    assert kept.gpu.need_bytes == replaced.gpu.need_bytes
    assert replaced.gpu.free_after_bytes - kept.gpu.free_after_bytes == SMALL_GPU
    assert replaced.ram.free_after_bytes - kept.ram.free_after_bytes == SMALL_RSS
    # while replace takes the primary's place (and its memory)
    assert (replaced.unit, replaced.port, replaced.replaces_runtime) == (PRIMARY, 8001, True)
    assert replaced.resident_models == []


def test_a_listening_port_is_skipped(seed_bucket: SeedBucket) -> None:
    # Given another process (no service) listening on 8002
    snapshot = instance(POLICY_PRIMARY, other_listeners=(8002,))

    # When a second model is kept beside the primary
    result, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", snapshot, resident="keep")

    # Then it takes the next free port, 8003
    assert result.fits, result.shortfalls
    assert (result.unit, result.port) == ("asoba-inference@mistral_iac_generation.service", 8003)


def test_the_seeds_ports_are_never_a_residents(seed_bucket: SeedBucket) -> None:
    # Given Flux stopped and the primary serving qwen3-14b-awq on 8000: nothing listens on 8001
    snapshot = instance(primary("qwen3-14b-awq", 8000, AWQ_GPU, AWQ_RSS, since=at(6, 5)), flux=False)
    assert 8001 not in snapshot.listening_ports

    # When a small model is kept beside it
    result, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", snapshot, resident="keep")

    # Then the resident still starts at 8002: the seed's coexist port stays the primary's
    assert result.fits, result.shortfalls
    assert (result.unit, result.port) == ("asoba-inference@mistral_iac_generation.service", 8002)


def test_a_configured_replace_port_is_never_a_residents(seed_bucket: SeedBucket) -> None:
    # Given a stack whose replace port is 8002, Flux stopped and the primary on 8001: 8002 is free
    policy = Policy(replace_port=8002)
    snapshot = instance(POLICY_PRIMARY, flux=False)
    assert 8002 not in snapshot.listening_ports

    # When a second model is kept beside the primary
    manifest = read_manifest(
        BotoS3Reader(seed_bucket.client, seed_bucket.bucket),
        "seed/",
        "mistral_iac_generation",
        builtin_catalog(),
    )
    result = plan(manifest, snapshot, DeployRequest(model="mistral_iac_generation", resident="keep"), policy)

    # Then it skips the replace port, which stays the primary's: 8003
    assert result.fits, result.shortfalls
    assert (result.unit, result.port) == ("asoba-inference@mistral_iac_generation.service", 8003)


@pytest.mark.parametrize("resident", ["keep", "replace"])
def test_redeploying_a_resident_reuses_its_unit_and_port(seed_bucket: SeedBucket, resident: str) -> None:
    # Given mistral_iac_generation already resident on 8005 beside the primary
    own = runtime("mistral_iac_generation", 8005, SMALL_GPU, SMALL_RSS, since=at(5, 9))
    snapshot = instance(POLICY_PRIMARY, own)

    # When it is deployed again
    result, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", snapshot, resident=resident)

    # Then it replaces itself in its own unit, on its own port, its memory freed
    assert result.fits, result.shortfalls
    assert (result.unit, result.port) == ("asoba-inference@mistral_iac_generation.service", 8005)
    assert result.replaces_runtime
    assert "the running asoba-inference@mistral_iac_generation.service is replaced by this deployment" in (
        result.warnings
    )
    # And the primary keeps serving, counted
    assert residents(result) == [("mistral_policy_analysis", PRIMARY, 8001)]
    assert result.gpu.used_by_others_after_bytes == OTHER_GPU + FLUX_GPU + SMALL_GPU


def test_keep_replaces_the_primary_when_it_serves_the_same_model(seed_bucket: SeedBucket) -> None:
    # Given the primary serving mistral_policy_analysis
    snapshot = instance(POLICY_PRIMARY)

    # When the same model is deployed with keep
    result, _ = plan_from_bucket(seed_bucket, "mistral_policy_analysis", snapshot, resident="keep")

    # Then there is nothing to keep beside: it replaces the primary in place
    assert (result.unit, result.port, result.replaces_runtime) == (PRIMARY, 8001, True)
    assert result.resident_models == []


def test_replace_targets_the_primary_and_keeps_residents_counted(seed_bucket: SeedBucket) -> None:
    # Given Flux, the primary and a resident mistral_iac_generation on 8002
    resident = runtime("mistral_iac_generation", 8002, SMALL_GPU, SMALL_RSS, since=at(6, 4))
    snapshot = instance(POLICY_PRIMARY, resident)

    # When deepseek-r1-8b is deployed with the default (replace)
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b", snapshot, strategy="stop-start")

    # Then it takes the primary unit (stopping Flux, a large model) on the seed's replace port
    assert result.fits, result.shortfalls
    assert (result.resident, result.unit, result.port) == ("replace", PRIMARY, 8000)
    assert result.stop_services == [FLUX] and result.replaces_runtime
    assert result.quantization == "none"
    # And the resident keeps serving, its measured memory counted (Flux's and the primary's freed)
    assert residents(result) == [
        ("mistral_iac_generation", "asoba-inference@mistral_iac_generation.service", 8002)
    ]
    assert result.resident_models[0].gpu_memory_bytes == SMALL_GPU
    assert result.gpu.used_by_others_after_bytes == OTHER_GPU + SMALL_GPU
    assert result.ram.used_by_others_after_bytes == BASE_RAM + SMALL_RSS
    assert result.evict_units == [] and result.would_evict == []


# Flux stopped; the primary (used a minute ago), qwen3-14b-awq resident and idle since the morning,
# mistral_iac_generation resident and used recently: 12.9 GiB of the 22.2 GiB left to models in use.
AWQ_RESIDENT = runtime("qwen3-14b-awq", 8002, AWQ_GPU, AWQ_RSS, since=at(5, 20), last_used_at=at(6, 1))
IAC_RESIDENT = runtime(
    "mistral_iac_generation", 8003, SMALL_GPU, SMALL_RSS, since=at(6, 2), last_used_at=at(6, 6, 50)
)


def busy_instance() -> InstanceSnapshot:
    return instance(POLICY_PRIMARY, AWQ_RESIDENT, IAC_RESIDENT, flux=False)


def test_a_third_model_that_does_not_fit_names_the_lru_resident(seed_bucket: SeedBucket) -> None:
    # Given the busy instance
    snapshot = busy_instance()

    # When qwen3-coder-30b (19.4 GiB at 4 bits) is kept beside them, without evict
    result, _ = plan_from_bucket(seed_bucket, "qwen3-coder-30b", snapshot, resident="keep")

    # Then it is refused, naming the least recently used resident whose stop would make room
    assert not result.fits
    assert result.unit == "asoba-inference@qwen3-coder-30b.service"
    assert result.would_evict == ["asoba-inference@qwen3-14b-awq.service"]
    assert result.evict_units == []
    sentence = next(s for s in result.shortfalls if s.startswith("fits only if these resident models stop"))
    assert "qwen3-14b-awq (asoba-inference@qwen3-14b-awq.service, port 8002" in sentence
    assert "last used 2025-08-06T01:00:00Z" in sentence
    assert 'give "evict": "lru" to stop them' in sentence
    assert "mistral_iac_generation" not in sentence and "mistral_policy_analysis" not in sentence
    # And nothing is stopped: every runtime unit keeps serving, counted
    assert [r.unit for r in result.resident_models] == [
        PRIMARY,
        "asoba-inference@qwen3-14b-awq.service",
        "asoba-inference@mistral_iac_generation.service",
    ]
    assert result.gpu.used_by_others_after_bytes == OTHER_GPU + 2 * SMALL_GPU + AWQ_GPU
    assert result.gpu.need_bytes > result.gpu.available_bytes


def test_evict_lru_stops_the_lru_resident_and_fits(seed_bucket: SeedBucket) -> None:
    # Given the busy instance
    snapshot = busy_instance()

    # When the same model is kept with evict "lru"
    result, _ = plan_from_bucket(seed_bucket, "qwen3-coder-30b", snapshot, resident="keep", evict="lru")

    # Then it fits once the least recently used resident stops, and only that one
    assert result.fits, result.shortfalls
    assert result.evict_units == ["asoba-inference@qwen3-14b-awq.service"]
    assert result.would_evict == ["asoba-inference@qwen3-14b-awq.service"]
    assert "qwen3-14b-awq" not in [r.model for r in result.resident_models]
    assert residents(result) == [
        ("mistral_policy_analysis", PRIMARY, 8001),
        ("mistral_iac_generation", "asoba-inference@mistral_iac_generation.service", 8003),
    ]
    # its memory freed, the others' counted
    assert result.gpu.used_by_others_after_bytes == OTHER_GPU + 2 * SMALL_GPU
    assert result.gpu.need_bytes <= result.gpu.available_bytes
    assert (result.unit, result.quantization) == ("asoba-inference@qwen3-coder-30b.service", "bnb-4bit")
    # and the summary (the console's one line) says what it stops
    assert "(evict asoba-inference@qwen3-14b-awq.service)" in result.summary
    assert any(
        r.startswith('evict "lru": stops the least recently used qwen3-14b-awq') for r in result.reasons
    )
    assert not any("fits only if" in s for s in result.shortfalls)


def test_lru_goes_by_last_use_over_start_and_evicts_two_when_one_is_not_enough(
    seed_bucket: SeedBucket,
) -> None:
    # Given, beside the primary (used last), three residents whose start order and use order differ:
    #   mistral_iac_generation  0.9 GiB  started first (Aug 1), used at 06:55   -> used third
    #   qwen3-14b-awq          11.1 GiB  started Aug 2, used at 03:00           -> used second
    #   deepseek-r1-8b          7.0 GiB  started Aug 5, never used (its start)  -> least recently used
    # 19.9 GiB in use: qwen3-coder-30b (19.4 GiB) fits only once both 8B and 14B stop; by start
    # order it would take all three.
    snapshot = instance(
        POLICY_PRIMARY,
        runtime(
            "mistral_iac_generation", 8002, SMALL_GPU, SMALL_RSS, since=at(1, 9), last_used_at=at(6, 6, 55)
        ),
        runtime("qwen3-14b-awq", 8003, AWQ_GPU, AWQ_RSS, since=at(2, 9), last_used_at=at(6, 3)),
        runtime("deepseek-r1-8b", 8004, DEEPSEEK_4BIT_GPU, DEEPSEEK_4BIT_RSS, since=at(5, 9)),
        flux=False,
    )
    lru_two = ["asoba-inference@deepseek-r1-8b.service", "asoba-inference@qwen3-14b-awq.service"]

    # When qwen3-coder-30b is kept, first without evict, then with evict "lru"
    refused, _ = plan_from_bucket(seed_bucket, "qwen3-coder-30b", snapshot, resident="keep")
    evicted, _ = plan_from_bucket(seed_bucket, "qwen3-coder-30b", snapshot, resident="keep", evict="lru")

    # Then the two least recently used (by last use, else start) are named, in that order
    assert not refused.fits
    assert refused.would_evict == lru_two
    sentence = next(s for s in refused.shortfalls if s.startswith("fits only if"))
    assert sentence.index("deepseek-r1-8b") < sentence.index("qwen3-14b-awq")
    assert "not used since it started 2025-08-05T09:00:00Z" in sentence
    # And with evict "lru" both stop and it fits; the others keep serving
    assert evicted.fits, evicted.shortfalls
    assert evicted.evict_units == lru_two
    assert residents(evicted) == [
        ("mistral_policy_analysis", PRIMARY, 8001),
        ("mistral_iac_generation", "asoba-inference@mistral_iac_generation.service", 8002),
    ]
    assert evicted.gpu.used_by_others_after_bytes == OTHER_GPU + 2 * SMALL_GPU


def test_a_model_too_big_even_with_every_resident_stopped(seed_bucket: SeedBucket) -> None:
    # Given the busy instance
    snapshot = busy_instance()

    # When llama-3-70b (45.6 GiB at 4 bits) is kept, even with evict "lru"
    result, _ = plan_from_bucket(seed_bucket, "llama-3-70b", snapshot, resident="keep", evict="lru")

    # Then nothing is evicted for nothing, and the shortfall says so
    assert not result.fits
    assert result.would_evict == [] and result.evict_units == []
    assert len(result.resident_models) == 3
    assert any(
        s.startswith("would not fit even with every resident model stopped") for s in result.shortfalls
    )


@pytest.mark.parametrize(
    "request_input",
    [
        {"model": "deepseek-r1-8b", "evict": "lru"},
        {"model": "deepseek-r1-8b", "resident": "replace", "evict": "lru"},
    ],
)
def test_evict_without_keep_is_invalid_input(request_input: dict[str, Any]) -> None:
    # Given an execution input asking to evict without keeping the residents
    # When it is parsed / Then it is refused, naming the field
    with pytest.raises(InvalidInput, match=r"evict: only with resident 'keep'"):
        parse_request(request_input)


def test_evict_with_keep_is_accepted() -> None:
    # Given keep with evict "lru" / When parsed / Then both are kept as given
    parsed = parse_request({"model": "deepseek-r1-8b", "resident": "keep", "evict": "lru"})
    assert (parsed.resident, parsed.evict) == ("keep", "lru")
    assert DeployRequest(model="deepseek-r1-8b").resident == "replace"
