"""Golden tests: the seed's decisions on the seed's instance, from real-sized sparse models.

Given the six seed models as sparse safetensors at their real sizes behind `rclone serve s3`
and the seed's instance (62 GiB RAM, 16 CPUs, A10G 23,028 MiB, Flux on 8000 using 54.8 % RAM),
when the planner reads each manifest and plans it,
then it reproduces the seed's table, reading nothing but headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from asoba_deploy.core.catalog import builtin_catalog
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.manifest import read_manifest
from asoba_deploy.core.planner import Plan, plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import BotoS3Reader, CountingReader
from asoba_deploy.core.snapshot import InstanceSnapshot
from tests.unit.conftest import SeedBucket
from tests.unit.planner_support import GIB, flux_stopped_snapshot, seed_snapshot


def plan_from_bucket(
    bucket: SeedBucket,
    model: str,
    snapshot: InstanceSnapshot | None = None,
    prefix: str = "seed/",
    **request: Any,
) -> tuple[Plan, CountingReader]:
    reader = CountingReader(BotoS3Reader(bucket.client, bucket.bucket))
    manifest = read_manifest(reader, prefix, model, builtin_catalog())
    result = plan(manifest, snapshot or seed_snapshot(), DeployRequest(model=model, **request), Policy())
    return result, reader


def assert_headers_only(bucket: SeedBucket, reader: CountingReader, prefix: str) -> None:
    limits = bucket.header_limits(prefix.rstrip("/"))
    for key, start, length in reader.ranges:
        if key.endswith(".safetensors"):
            end = start + length
            assert end <= limits[key], f"read {key} up to {end}, its header ends at {limits[key]}"


READ_BUDGET_BYTES = 1_000_000  # the planner's S3 reads per model (issue 13)


@dataclass(frozen=True)
class Expected:
    action: str
    port: int
    stop_flux: bool
    quantization: str
    deploy_model: str
    gpu_need_gib: tuple[float, float]  # range
    weights_gib: tuple[float, float]


SEED_TABLE = {
    # Tier 1: 298/297 MB, "<1GB" memory, coexist with Flux.
    "mistral_policy_analysis": Expected(
        "coexist", 8001, False, "none", "mistral_policy_analysis", (0.5, 1.0), (0.28, 0.30)
    ),
    "mistral_iac_generation": Expected(
        "coexist", 8001, False, "none", "mistral_iac_generation", (0.5, 1.0), (0.28, 0.30)
    ),
    # 28 GB, stops Flux, the AWQ variant is preferred when the bucket has it (~12 GB memory).
    "qwen3-14b": Expected("replace", 8000, True, "awq", "qwen3-14b-awq", (10.5, 12.5), (9.0, 9.5)),
    # Tier 2: pre-quantized ~10 GB, "~12GB" memory.
    "qwen3-14b-awq": Expected("replace", 8000, True, "awq", "qwen3-14b-awq", (10.5, 12.5), (9.0, 9.5)),
    # ~62 GB MoE, 4-bit on load: ~16 GiB of 4-bit weights.
    "qwen3-coder-30b": Expected(
        "replace", 8000, True, "bnb-4bit", "qwen3-coder-30b", (18.0, 21.0), (16.0, 17.5)
    ),
    # ~16 GB, "~18GB" memory, no quantization.
    "deepseek-r1-8b": Expected("replace", 8000, True, "none", "deepseek-r1-8b", (17.0, 18.5), (14.9, 15.0)),
}


@pytest.mark.parametrize("model", sorted(SEED_TABLE))
def test_seed_model_decision(seed_bucket: SeedBucket, model: str) -> None:
    # Given the seed's instance with Flux running / When planned
    result, reader = plan_from_bucket(seed_bucket, model)
    expected = SEED_TABLE[model]

    # Then the seed's decision
    assert result.fits, result.shortfalls
    assert result.action == expected.action
    assert result.port == expected.port
    assert result.stop_services == (["flux-api.service"] if expected.stop_flux else [])
    assert result.quantization == expected.quantization
    assert result.deploy_model == expected.deploy_model
    low, high = expected.gpu_need_gib
    assert low * GIB <= result.gpu.need_bytes <= high * GIB
    low, high = expected.weights_gib
    assert low * GIB <= result.gpu.breakdown["weights"] <= high * GIB
    assert result.gpu.need_bytes <= result.gpu.available_bytes
    assert result.endpoints.status == f"http://localhost:{expected.port}/status"
    assert result.model_path == f"/opt/models/{expected.deploy_model}"
    assert result.source_uri == f"s3://asoba-llm-cache/seed/{expected.deploy_model}/"
    assert result.context_tokens == 4096
    assert result.reasons and result.summary
    # The seed's snapshot reports no candidate roots: the configured one, unmeasured
    assert result.models_root == "/opt/models"
    assert result.models_root_reason.endswith("write rate not measured): the only models root")
    estimate = result.time_to_healthy
    assert estimate is not None and estimate.basis["transfer_bytes"] == result.bytes_to_transfer
    # planned with no time before it: the steps' overhead, then sync | install -> load -> warm-up
    assert estimate.elapsed_s == 0 and estimate.steps_s > 0
    waited = (
        estimate.install_s + estimate.load_s + estimate.warmup_s
        if result.load_from == "stream"
        else max(estimate.transfer_s, estimate.install_s) + estimate.load_s + estimate.warmup_s
    )
    assert estimate.estimate_s == pytest.approx(estimate.steps_s + waited, abs=0.02)
    # And the planner read headers only, at most 1 MB for tens of GB (the MoE's 1.6 MB index
    # is not read, its 2.3 MB of headers are sampled)
    assert_headers_only(seed_bucket, reader, "seed/")
    assert reader.bytes_read <= READ_BUDGET_BYTES, f"{model} read {reader.bytes_read:,} bytes"
    assert not any(key.endswith(".index.json") for key, _, _ in reader.ranges)


def test_small_models_coexist_with_flux_still_counted(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "mistral_policy_analysis")
    # Flux keeps its 12 GiB of GPU and 34 GiB of RAM: they stay "used by others".
    assert result.gpu.used_by_others_after_bytes >= 12 * GIB
    assert result.ram.used_by_others_after_bytes >= 34 * GIB
    assert any("with flux-api.service running" in r for r in result.reasons)
    assert result.bytes_to_transfer == result.total_bytes
    assert 297 * (1 << 20) < result.total_bytes < 300 * (1 << 20)


def test_replace_reports_memory_freed_by_stopping_flux(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b")
    # The seed: "freed ~34GB + available 26GB = 60GB total"; GPU: "Full 23GB available".
    assert result.ram.available_bytes >= 59 * GIB
    assert result.gpu.available_bytes >= 22 * GIB
    assert any("after stopping flux-api.service" in r for r in result.reasons)
    assert any("no quantization" in r and "within the 20.0 GiB" in r for r in result.reasons)


def test_qwen3_14b_without_awq_variant_gets_bnb_4bit(seed_bucket: SeedBucket) -> None:
    result, reader = plan_from_bucket(seed_bucket, "qwen3-14b", prefix="noawq/")
    assert result.fits
    assert (result.action, result.port, result.quantization) == ("replace", 8000, "bnb-4bit")
    assert result.deploy_model == "qwen3-14b"
    assert not result.prequantized
    assert 11 * GIB < result.gpu.need_bytes < 13 * GIB
    assert any("qwen3-14b-awq is not in the bucket" in w for w in result.warnings)
    assert any("above the 20.0 GiB quantization threshold" in r for r in result.reasons)
    assert_headers_only(seed_bucket, reader, "noawq/")


def test_qwen3_14b_reasons_explain_the_unquantized_need(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "qwen3-14b")
    # The seed's "~30GB": unquantized need ~31 GiB, above 20 -> the AWQ variant.
    assert any("unquantized it needs 31." in r and "AWQ variant qwen3-14b-awq" in r for r in result.reasons)
    assert result.files and all(f.key.startswith("seed/qwen3-14b-awq/") for f in result.files)
    assert 9 * GIB < result.bytes_to_transfer < 10 * GIB


def test_force_quantize_forces_bnb_4bit(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b", force_quantize=True)
    assert result.fits
    assert result.quantization == "bnb-4bit"
    assert result.gpu.need_bytes < 8 * GIB
    # force_quantize means bitsandbytes even when an AWQ variant exists.
    result, _ = plan_from_bucket(seed_bucket, "qwen3-14b", force_quantize=True)
    assert (result.quantization, result.deploy_model) == ("bnb-4bit", "qwen3-14b")


def test_long_context_makes_deepseek_quantize(seed_bucket: SeedBucket) -> None:
    # The docstring's tension: at 32768 tokens the KV reserve (4 GiB) pushes deepseek over 20 GiB.
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b", context_tokens=32768)
    assert result.quantization == "bnb-4bit"
    assert result.gpu.breakdown["kv_cache"] == 4 * GIB


def test_model_too_big_even_at_4_bits(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "llama-3-70b")
    assert not result.fits
    assert result.quantization == "bnb-4bit"
    assert result.action == "replace"
    assert result.gpu.need_bytes > result.gpu.available_bytes
    (shortfall,) = result.shortfalls
    assert "GPU" in shortfall and "short by" in shortfall
    assert result.in_catalog is False and result.tier is None


def test_full_disk_does_not_fit(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b", seed_snapshot(disk_free_bytes=3 * GIB))
    assert not result.fits
    (shortfall,) = result.shortfalls
    assert "disk" in shortfall and "short by 14.0 GiB" in shortfall


def test_instance_without_gpu_does_not_fit(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b", seed_snapshot(gpus=[]))
    assert not result.fits
    assert any("no GPU" in s for s in result.shortfalls)
    result, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", seed_snapshot(gpus=[]))
    assert not result.fits


def test_cached_model_is_not_transferred(seed_bucket: SeedBucket) -> None:
    written = seed_bucket.written["seed/deepseek-r1-8b"]
    whole = {"name": "deepseek-r1-8b", "bytes": written.total_bytes, "files": len(written.files)}
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b", seed_snapshot(cached_models=[whole]))
    assert result.bytes_to_transfer == 0
    assert all(f.cached for f in result.files)
    # Per-file sizes: only the shard that is missing (or differs) is transferred.
    sizes = dict(written.files)
    missing = "model-00002-of-000002.safetensors"
    sizes[missing] -= 1
    partial = {**whole, "file_sizes": sizes}
    result, _ = plan_from_bucket(
        seed_bucket, "deepseek-r1-8b", seed_snapshot(cached_models=[partial], disk_free_bytes=10 * GIB)
    )
    assert result.bytes_to_transfer == written.files[missing]
    assert result.fits  # 10 GiB of disk is enough for one 7.5 GiB shard


def test_flux_not_running(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b", flux_stopped_snapshot())
    assert (result.action, result.port, result.stop_services) == ("replace", 8000, [])
    result, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", flux_stopped_snapshot())
    assert (result.action, result.port, result.stop_services) == ("coexist", 8001, [])


def test_allow_stop_flux_false_keeps_flux(seed_bucket: SeedBucket) -> None:
    # deepseek beside Flux (10.2 GiB free): 4-bit is the only way to fit.
    result, _ = plan_from_bucket(seed_bucket, "deepseek-r1-8b", allow_stop_flux=False)
    assert (result.action, result.port, result.stop_services) == ("coexist", 8001, [])
    assert result.fits and result.quantization == "bnb-4bit"
    assert any("only way to fit" in r for r in result.reasons)
    # qwen3-coder-30b needs ~19 GiB even at 4 bits: it cannot fit beside Flux.
    result, _ = plan_from_bucket(seed_bucket, "qwen3-coder-30b", allow_stop_flux=False)
    assert result.action == "coexist" and result.stop_services == []
    assert not result.fits
    assert any("GPU" in s and "with flux-api.service running" in s for s in result.shortfalls)


def test_small_model_that_does_not_fit_beside_flux_replaces_it(seed_bucket: SeedBucket) -> None:
    busy_gpu = seed_snapshot(
        gpus=[
            {
                "index": 0,
                "name": "NVIDIA A10G",
                "memory_total_bytes": 23028 << 20,
                "memory_used_bytes": 22 * GIB,
            }
        ],
        services=[
            {
                "unit": "flux-api.service",
                "state": "active",
                "rss_bytes": 34 * GIB,
                "gpu_memory_bytes": 22 * GIB - (300 << 20),
                "port": 8000,
            }
        ],
    )
    result, _ = plan_from_bucket(seed_bucket, "mistral_policy_analysis", busy_gpu)
    assert result.fits
    assert (result.action, result.port, result.quantization) == ("replace", 8000, "none")
    assert result.stop_services == ["flux-api.service"]
    assert any("small model" in w for w in result.warnings)


def test_requested_port_held_by_flux_is_a_shortfall(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", port=8000)
    # Coexisting on Flux's port is refused; with allow_stop_flux the planner stops Flux instead.
    assert result.fits and result.action == "replace" and result.port == 8000
    result, _ = plan_from_bucket(seed_bucket, "mistral_iac_generation", port=8000, allow_stop_flux=False)
    assert not result.fits
    assert any("port 8000 is in use by flux-api.service" in s for s in result.shortfalls)


def test_plan_json_round_trip(seed_bucket: SeedBucket) -> None:
    result, _ = plan_from_bucket(seed_bucket, "qwen3-coder-30b")
    dumped = result.model_dump(mode="json")
    assert Plan.model_validate(dumped) == result
    assert dumped["gpu"]["breakdown"].keys() == {"weights", "kv_cache", "cuda_context", "margin"}
    assert dumped["parameters"] > 30_000_000_000


def test_the_moe_reads_a_sample_of_its_headers_with_exact_totals(seed_bucket: SeedBucket) -> None:
    # Given qwen3-coder-30b: 16 shards, 18,867 tensors, 2.3 MB of headers and a 1.6 MB index
    from local.sparse_models import seed_manifest

    reader = CountingReader(BotoS3Reader(seed_bucket.client, seed_bucket.bucket))
    manifest = read_manifest(reader, "seed/", "qwen3-coder-30b", builtin_catalog())
    exact = seed_manifest("qwen3-coder-30b").weights  # every header, parsed in memory

    # Then it read under 1 MB: no index, some headers whole, the rest's 8-byte lengths
    assert reader.bytes_read <= READ_BUDGET_BYTES
    weights = manifest.weights
    assert weights.source == "safetensors-sampled"
    assert weights.headers_total == 16 and 2 <= weights.headers_read < 16
    # And what the plan uses is exact or within a millionth: bytes, parameters, embeddings
    assert weights.stored_bytes == exact.stored_bytes
    assert weights.parameters == exact.parameters
    assert weights.embedding == exact.embedding
    assert weights.largest_file_bytes == exact.largest_file_bytes
    assert abs(weights.linear.elements - exact.linear.elements) <= 1e-6 * exact.linear.elements
    assert any(w.startswith(f"read the headers of {weights.headers_read} of 16") for w in manifest.warnings)
