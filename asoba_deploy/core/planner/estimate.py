"""Estimating: what one way of deploying a manifest needs, as pure arithmetic.

GPU need = weights + KV reserve + CUDA context + margin (+ vLLM's own allocations with the vllm
engine); RAM need = runtime + load buffer + margin (+ vLLM's engine process); disk = bytes of the
files not already cached. No decisions and no sentences here:
`decide` picks among the options, `explain` puts the numbers into words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from asoba_deploy.core.engines import Engine
from asoba_deploy.core.manifest import Manifest
from asoba_deploy.core.planner.models import DiskEstimate, MemoryEstimate, PlanFile
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.quantization import Quantization
from asoba_deploy.core.snapshot import CachedModel, InstanceSnapshot

ADAPTER_BYTES_PER_PARAM = 4  # PEFT upcasts adapter weights to fp32 by default


@dataclass(frozen=True)
class Option:
    """One way to load a model: the quantization kind and the folder it applies to."""

    quantization: Quantization
    prequantized: bool
    deploy: Manifest


def weights_bytes(option: Option, policy: Policy) -> int:
    """GPU bytes of the weights as the runtime holds them."""
    dtype_bytes = 2
    target = option.deploy.base if option.deploy.adapter and option.deploy.base else option.deploy
    stats = target.weights
    sixteen_bit = (stats.embedding.elements + stats.other.elements) * dtype_bytes
    if option.quantization == "bnb-4bit" and not option.prequantized:
        linear = math.ceil(stats.linear.elements * policy.nf4_bits_per_param / 8)
    else:
        linear = stats.linear.elements * dtype_bytes
    total = linear + sixteen_bit + stats.quantized.stored_bytes
    if option.deploy.adapter:
        adapter = option.deploy.weights
        total += adapter.float_elements * ADAPTER_BYTES_PER_PARAM + adapter.quantized.stored_bytes
    return total


def kv_bytes(manifest: Manifest, tokens: int, policy: Policy) -> int:
    per_token = manifest.shape.kv_elements_per_token()
    return 0 if per_token is None else per_token * tokens * policy.kv_cache_bytes


def gpu_need(
    manifest: Manifest, option: Option, tokens: int, policy: Policy, engine: Engine = "transformers"
) -> dict[str, int]:
    """The GPU breakdown: weights, kv_cache, cuda_context, margin (bytes), and with vLLM its
    engine_overhead (activations of its profile run, CUDA graphs)."""
    weights = weights_bytes(option, policy)
    kv = kv_bytes(option.deploy, tokens, policy)
    margin = math.ceil((weights + kv) * policy.memory_margin_fraction)
    need = {
        "weights": weights,
        "kv_cache": kv,
        "cuda_context": policy.cuda_context_bytes,
        "margin": margin,
    }
    if engine == "vllm":
        need["engine_overhead"] = policy.vllm_overhead_bytes
    return need


def ram_need(option: Option, policy: Policy, engine: Engine = "transformers") -> dict[str, int]:
    """The RAM breakdown: runtime, load_buffer (largest weight file), margin (bytes), and with
    vLLM its engine_process."""
    deploy = option.deploy
    largest = deploy.weights.largest_file_bytes
    if deploy.base is not None:
        largest = max(largest, deploy.base.weights.largest_file_bytes)
    margin = math.ceil((policy.runtime_ram_bytes + largest) * policy.memory_margin_fraction)
    need = {"runtime": policy.runtime_ram_bytes, "load_buffer": largest, "margin": margin}
    if engine == "vllm":
        need["engine_process"] = policy.vllm_ram_bytes
    return need


def gpu_memory_utilization(gpu: MemoryEstimate, policy: Policy) -> float | None:
    """vLLM's gpu_memory_utilization for a GPU need: the need as a fraction of total GPU memory,
    rounded up to `policy.utilization_step`, but never above what is available (vLLM refuses to
    start when less than utilization x total is free, so Flux and the other services that stay
    keep their memory). None without GPU memory."""
    if gpu.total_bytes <= 0:
        return None
    steps = round(1 / policy.utilization_step)
    wanted = -(-gpu.need_bytes * steps // gpu.total_bytes)  # ceil
    room = gpu.available_bytes * steps // gpu.total_bytes  # floor
    chosen = min(wanted, room) if gpu.need_bytes <= gpu.available_bytes else wanted
    return min(max(chosen, 1), steps) / steps


def memory_estimate(need: dict[str, int], total: int, used_before: int, freed: int) -> MemoryEstimate:
    """`need` against a device of `total` bytes, `used_before` of them in use, `freed` by the stops."""
    need_bytes = sum(need.values())
    others_after = max(0, used_before - freed)
    available = max(0, total - others_after)
    return MemoryEstimate(
        need_bytes=need_bytes,
        breakdown=need,
        total_bytes=total,
        used_before_bytes=used_before,
        free_before_bytes=max(0, total - used_before),
        used_by_others_after_bytes=others_after,
        available_bytes=available,
        free_after_bytes=available - need_bytes,
    )


def _whole_copy(manifest: Manifest, cached: CachedModel | None) -> bool:
    # Without per-file sizes, a copy matching the needed files (or the whole folder, if the
    # sync mirrored the skipped files too) counts as cached.
    if cached is None or cached.file_sizes:
        return False
    needed = (manifest.total_bytes, len(manifest.files))
    mirrored = (
        manifest.total_bytes + sum(f.bytes for f in manifest.skipped),
        len(manifest.files) + len(manifest.skipped),
    )
    return (cached.bytes, cached.files) in (needed, mirrored)


def plan_files(
    manifests: Sequence[Manifest], snapshot: InstanceSnapshot, models_root: str, cache_root: str | None = None
) -> tuple[list[PlanFile], list[CachedModel]]:
    """Every file to sync under `models_root`, marked cached or not (a copy counts only in the
    root that holds it: `cache_root`, default `models_root`), and the cached copies there that
    match nothing."""
    files: list[PlanFile] = []
    stale: list[CachedModel] = []
    root = models_root.rstrip("/")
    for manifest in manifests:
        cached = snapshot.cached(manifest.name, cache_root or root)
        whole_copy = _whole_copy(manifest, cached)
        if cached is not None and not cached.file_sizes and not whole_copy:
            stale.append(cached)
        for item in manifest.files:
            is_cached = whole_copy or (cached is not None and cached.file_sizes.get(item.path) == item.bytes)
            files.append(
                PlanFile(
                    key=item.key,
                    bytes=item.bytes,
                    local_path=f"{root}/{manifest.name}/{item.path}",
                    cached=is_cached,
                )
            )
    return files, stale


def disk_estimate(files: Sequence[PlanFile], free_bytes: int, policy: Policy) -> DiskEstimate:
    """The files not cached against `free_bytes` of one models root."""
    to_transfer = sum(f.bytes for f in files if not f.cached)
    return DiskEstimate(
        needed_bytes=to_transfer,
        free_bytes=free_bytes,
        reserve_bytes=policy.disk_reserve_bytes,
        free_after_bytes=free_bytes - to_transfer,
    )
