"""The planner: `plan(manifest, snapshot, request, policy) -> Plan`, a pure function.

It applies the seed's resource rules to exact sizes (from safetensors headers) and to
what the instance reports, and its output is the dry run.

Rules (thresholds from `Policy`, defaults from the seed):
1. Action. A model whose weights are under 3 GiB (`small_model_max_bytes`) runs beside Flux
   (`coexist`, port 8001); a larger one stops Flux (`replace`, port 8000). A small model
   that does not fit beside Flux falls back to `replace` when `allow_stop_flux`; a large
   one with `allow_stop_flux: false` is planned beside Flux and fits only if room is left.
2. Quantization. `force_quantize` gives bnb-4bit; a pre-quantized checkpoint (AWQ, GPTQ,
   bitsandbytes) is loaded as stored. Otherwise the *full* unquantized GPU need (weights +
   KV reserve + CUDA context + margin, below) is compared with the 20 GiB threshold
   (`quantize_above_bytes`): above it, the pre-quantized AWQ variant is taken when the
   bucket has one (`awq`, deploy_model = the variant), else bitsandbytes 4-bit on load;
   at or under it, `none` unless only a quantized form fits (AWQ variant, then bnb-4bit).
3. Fit. GPU need <= GPU total - what other processes keep using after the stops; RAM
   likewise and under the runtime unit's MemoryMax; bytes to transfer + reserve <= disk
   free; the port is not held by a service that keeps running.

Memory model (GPU):
    weights      bf16/fp16: 2 B/param; bnb-4bit: `nf4_bits_per_param` (4.5) bits for Linear
                 weights, embeddings/lm_head and 1-D tensors stay 16-bit; pre-quantized
                 storage as stored; a LoRA adapter's tensors at fp32 (PEFT upcasts them)
    kv_cache     2 x layers x kv_heads x head_dim x context_tokens x kv_cache_bytes
    cuda_context 0.5 GiB
    margin       10 % of weights + kv_cache (allocator fragmentation, activations)
RAM: runtime (python + torch + CUDA libraries, 2 GiB) + load buffer (the largest weight
file: transformers materialises one shard at a time) + the same margin fraction.

The tension with the seed, and how it is resolved. The seed says deepseek-r1-8b (~16 GB,
"~18GB memory", quantization "optional") runs unquantized on the 23 GB GPU while qwen3-14b
(28 GB) must be quantized, and that quantization starts "above 20 GB". Judged by file size
alone, 16 GB and 28 GB sit either side of 20 GB, but the GPU also holds the KV cache, so the
decision depends on the context reserved: DeepSeek-R1-Distill-Llama-8B keeps 128 KiB of KV
per token, so at its full 131,072-token window the KV alone is 16 GiB and the model would
need ~34 GiB. The planner therefore applies the threshold to the full estimate at the
request's `context_tokens` (default 4096, the seed's "sensible" working context): deepseek
needs 14.96 weights + 0.50 KV + 0.50 CUDA + 1.55 margin = 17.5 GiB (the seed's "~18GB"),
under 20 -> `none`; qwen3-14b needs 31.4 GiB unquantized (the seed's "~30GB") -> AWQ variant
(11.4 GiB, the seed's "~12GB") or bnb-4bit (12.0 GiB). "Optional" then means: `force_quantize`,
or a long context (e.g. 32768 tokens: 21.4 GiB) quantizes deepseek too. The context is
clamped to the model's max_position_embeddings. qwen3-coder-30b (61 GB, MoE: 48 layers x 128
experts, every expert Linear quantized) gets 16.8 GiB of 4-bit weights (the seed's "~16GB")
and needs 19.4 GiB in all: above the threshold unquantized (63.5 GiB), within the A10G's
22.5 GiB once Flux is stopped.

Sizes are bytes; GiB = 2**30 in the words of `reasons`.

The Plan (JSON, `Plan.model_dump(mode="json")`), field: meaning
    schema_version      1
    model               the requested model (bucket folder)
    deploy_model        the folder actually deployed (qwen3-14b-awq when substituting)
    tier                1 | 2 from the catalog, null for a generic model
    in_catalog          whether the catalog lists the requested model
    source_uri          s3://bucket/prefix/<deploy_model>/
    base_model          adapters: the base model's folder (null otherwise)
    base_source_uri     adapters: s3://bucket/prefix/<base_model>/
    base_model_path     adapters: <models_root>/<base_model>
    files               [{key, bytes, local_path, cached}] every file the sync must have
    total_bytes         sum of files' bytes
    bytes_to_transfer   bytes of files not already cached on the instance
    skipped_files       S3 keys under the model folder(s) the runtime does not need (other weight
                        formats beside safetensors, original/, hidden folders): a sync may exclude them
    skipped_bytes       their total size (not in bytes_to_transfer)
    action              "coexist" (beside Flux) | "replace" (Flux stopped)
    stop_services       systemd units to stop before installing (Flux for replace, if active)
    replaces_runtime    whether a running asoba-inference unit is replaced
    quantization        "none" | "bnb-4bit" | "bnb-8bit" | "awq" | "gptq"
    prequantized        true: the checkpoint is stored quantized (load as is);
                        false with bnb-4bit: quantize on load (BitsAndBytesConfig nf4)
    dtype               compute dtype: "bfloat16" | "float16"
    context_tokens      the KV reserve the estimate used (clamped to the model's maximum)
    parameters          logical parameter count (base + adapter)
    port, unit          TCP port and systemd unit of the runtime
    model_path          <models_root>/<deploy_model> (the adapter's folder for adapters)
    models_root         the instance's models root
    endpoints           {status, health, generate, openai_base} on endpoint_host:port
    gpu, ram            MemoryEstimate: need_bytes, breakdown {name: bytes}, total_bytes,
                        used_before_bytes, free_before_bytes, used_by_others_after_bytes,
                        available_bytes (total - others after), free_after_bytes
                        (available - need; negative = shortfall)
    disk                {needed_bytes, free_bytes, reserve_bytes, free_after_bytes}
    fits                whether every check passes
    reasons             the decision in plain words (action, quantization, GPU, RAM, disk, port)
    shortfalls          the failed checks only (empty when fits)
    warnings            things to know that do not block the plan
    summary             one line
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.manifest import Manifest
from asoba_deploy.core.policy import GIB, Policy
from asoba_deploy.core.snapshot import InstanceSnapshot, ServiceState

Action = Literal["coexist", "replace"]
Quantization = Literal["none", "bnb-4bit", "bnb-8bit", "awq", "gptq"]
Dtype = Literal["bfloat16", "float16"]

PLAN_SCHEMA_VERSION: Literal[1] = 1
ADAPTER_BYTES_PER_PARAM = 4  # PEFT upcasts adapter weights to fp32 by default


class PlanFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    bytes: int = Field(ge=0)
    local_path: str
    cached: bool


class Endpoints(BaseModel):
    status: str
    health: str
    generate: str
    openai_base: str


class MemoryEstimate(BaseModel):
    need_bytes: int
    breakdown: dict[str, int]
    total_bytes: int
    used_before_bytes: int
    free_before_bytes: int
    used_by_others_after_bytes: int
    available_bytes: int
    free_after_bytes: int

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.available_bytes


class DiskEstimate(BaseModel):
    needed_bytes: int
    free_bytes: int
    reserve_bytes: int
    free_after_bytes: int

    @property
    def fits(self) -> bool:
        return self.needed_bytes + self.reserve_bytes <= self.free_bytes


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = PLAN_SCHEMA_VERSION
    model: str
    deploy_model: str
    tier: Literal[1, 2] | None
    in_catalog: bool
    source_uri: str
    base_model: str | None = None
    base_source_uri: str | None = None
    base_model_path: str | None = None
    files: list[PlanFile]
    total_bytes: int
    bytes_to_transfer: int
    skipped_files: list[str] = Field(default_factory=list)
    skipped_bytes: int = 0
    action: Action
    stop_services: list[str]
    replaces_runtime: bool
    quantization: Quantization
    prequantized: bool
    dtype: Dtype
    context_tokens: int
    parameters: int
    port: int
    unit: str
    model_path: str
    models_root: str
    endpoints: Endpoints
    gpu: MemoryEstimate
    ram: MemoryEstimate
    disk: DiskEstimate
    fits: bool
    reasons: list[str]
    shortfalls: list[str]
    warnings: list[str]
    summary: str


def gib(value: int) -> str:
    """Bytes in GiB with one decimal, the unit of every sentence of a plan."""
    return f"{value / GIB:.1f} GiB"


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    quantization: Quantization
    prequantized: bool
    deploy: Manifest


@dataclass(frozen=True)
class _Evaluation:
    action: Action
    option: _Option
    port: int
    stop_services: tuple[str, ...]
    gpu: MemoryEstimate
    ram: MemoryEstimate
    disk: DiskEstimate
    files: tuple[PlanFile, ...]
    lines: tuple[str, ...]
    shortfalls: tuple[str, ...]
    cache_warnings: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.shortfalls


def _dtype_for(manifest: Manifest, option: _Option, policy: Policy) -> Dtype:
    if option.quantization in ("awq", "gptq"):
        return "float16"  # the AWQ/GPTQ kernels compute in fp16
    declared = (manifest.base or manifest).shape.torch_dtype
    if declared == "bfloat16":
        return "bfloat16"
    if declared == "float16":
        return "float16"
    return policy.default_dtype


def _weights_bytes(manifest: Manifest, option: _Option, policy: Policy) -> int:
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


def _kv_bytes(manifest: Manifest, tokens: int, policy: Policy) -> int:
    per_token = manifest.shape.kv_elements_per_token()
    return 0 if per_token is None else per_token * tokens * policy.kv_cache_bytes


def gpu_need(manifest: Manifest, option: _Option, tokens: int, policy: Policy) -> dict[str, int]:
    weights = _weights_bytes(manifest, option, policy)
    kv = _kv_bytes(option.deploy, tokens, policy)
    margin = math.ceil((weights + kv) * policy.memory_margin_fraction)
    return {
        "weights": weights,
        "kv_cache": kv,
        "cuda_context": policy.cuda_context_bytes,
        "margin": margin,
    }


def ram_need(option: _Option, policy: Policy) -> dict[str, int]:
    deploy = option.deploy
    largest = deploy.weights.largest_file_bytes
    if deploy.base is not None:
        largest = max(largest, deploy.base.weights.largest_file_bytes)
    margin = math.ceil((policy.runtime_ram_bytes + largest) * policy.memory_margin_fraction)
    return {"runtime": policy.runtime_ram_bytes, "load_buffer": largest, "margin": margin}


def _files(
    manifests: Sequence[Manifest], snapshot: InstanceSnapshot, policy: Policy
) -> tuple[list[PlanFile], list[str]]:
    files: list[PlanFile] = []
    warnings: list[str] = []
    root = policy.models_root.rstrip("/")
    for manifest in manifests:
        cached = snapshot.cached(manifest.name)
        # Without per-file sizes, a copy matching the needed files (or the whole folder, if the
        # sync mirrored the skipped files too) counts as cached.
        whole_copy = (
            cached is not None
            and not cached.file_sizes
            and (cached.bytes, cached.files)
            in (
                (manifest.total_bytes, len(manifest.files)),
                (manifest.total_bytes + sum(f.bytes for f in manifest.skipped),
                 len(manifest.files) + len(manifest.skipped)),
            )
        )
        if cached is not None and not cached.file_sizes and not whole_copy:
            warnings.append(
                f"{root}/{manifest.name} holds a different copy ({gib(cached.bytes)}, {cached.files} files); "
                "counting every file as to be transferred"
            )
        for item in manifest.files:
            is_cached = whole_copy or (
                cached is not None and cached.file_sizes.get(item.path) == item.bytes
            )
            files.append(
                PlanFile(
                    key=item.key,
                    bytes=item.bytes,
                    local_path=f"{root}/{manifest.name}/{item.path}",
                    cached=is_cached,
                )
            )
    return files, warnings


def _service_port(service: ServiceState, policy: Policy) -> int | None:
    if service.port is not None:
        return service.port
    if service.unit == policy.flux_unit:
        return policy.replace_port  # the seed's Flux listens on 8000
    return None


def _memory(
    need: dict[str, int], total: int, used_before: int, freed: int
) -> MemoryEstimate:
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


def _evaluate(
    manifest: Manifest,
    snapshot: InstanceSnapshot,
    request: DeployRequest,
    policy: Policy,
    action: Action,
    option: _Option,
    tokens: int,
) -> _Evaluation:
    flux = snapshot.service(policy.flux_unit)
    runtime = snapshot.service(policy.runtime_unit)
    stops: tuple[str, ...] = (
        (policy.flux_unit,) if action == "replace" and flux is not None and flux.active else ()
    )
    leaving = [s for s in (snapshot.service(u) for u in stops) if s is not None]
    if runtime is not None:
        leaving.append(runtime)  # the new deployment replaces the runtime unit in place
    stop_words = f"after stopping {', '.join(stops)}" if stops else (
        f"with {policy.flux_unit} running" if flux is not None and flux.active else "on the instance"
    )

    # GPU
    gpu = _memory(
        gpu_need(manifest, option, tokens, policy),
        snapshot.gpu_total_bytes,
        snapshot.gpu_used_bytes,
        sum(s.gpu_memory_bytes for s in leaving),
    )
    # RAM
    ram = _memory(
        ram_need(option, policy),
        snapshot.ram_total_bytes,
        max(0, snapshot.ram_total_bytes - snapshot.ram_available_bytes),
        sum(s.rss_bytes for s in leaving),
    )
    # Disk and files
    manifests = [option.deploy] if option.deploy.base is None else [option.deploy.base, option.deploy]
    files, cache_warnings = _files(manifests, snapshot, policy)
    to_transfer = sum(f.bytes for f in files if not f.cached)
    disk = DiskEstimate(
        needed_bytes=to_transfer,
        free_bytes=snapshot.disk_free_bytes,
        reserve_bytes=policy.disk_reserve_bytes,
        free_after_bytes=snapshot.disk_free_bytes - to_transfer,
    )
    # Port
    port = request.port or (policy.coexist_port if action == "coexist" else policy.replace_port)
    # Who holds each port once the stops ran: active services (minus those leaving), and
    # listening sockets no service accounts for.
    claims: dict[int, list[str]] = {}
    for service in snapshot.services:
        service_port = _service_port(service, policy)
        if service.active and service_port is not None:
            claims.setdefault(service_port, []).append(service.unit)
    for listening in snapshot.listening_ports:
        claims.setdefault(listening, ["another process"])
    leaving_units = {s.unit for s in leaving}
    holders = {
        p: kept for p, units in claims.items() if (kept := [u for u in units if u not in leaving_units])
    }

    lines: list[str] = []
    shortfalls: list[str] = []
    b = gpu.breakdown
    detail = (
        f"weights {gib(b['weights'])}, KV cache {gib(b['kv_cache'])} for {tokens} tokens, "
        f"CUDA context {gib(b['cuda_context'])}, margin {gib(b['margin'])}"
    )
    if not snapshot.gpus:
        shortfalls.append(
            f"the instance reports no GPU; {option.deploy.name} needs {gib(gpu.need_bytes)} of GPU memory"
        )
    elif not gpu.fits:
        shortfalls.append(
            f"needs {gib(gpu.need_bytes)} GPU ({detail}) but only {gib(gpu.available_bytes)} is available: "
            f"{gib(gpu.total_bytes)} total, {gib(gpu.used_by_others_after_bytes)} used by other processes "
            f"{stop_words}; short by {gib(gpu.need_bytes - gpu.available_bytes)}"
        )
    else:
        lines.append(
            f"needs {gib(gpu.need_bytes)} GPU ({detail}), {gib(gpu.total_bytes)} total, "
            f"{gib(gpu.used_by_others_after_bytes)} used by other processes {stop_words}: "
            f"{gib(gpu.free_after_bytes)} left"
        )
    if not ram.fits:
        shortfalls.append(
            f"needs {gib(ram.need_bytes)} RAM but only {gib(ram.available_bytes)} is available: "
            f"{gib(ram.total_bytes)} total, {gib(ram.used_by_others_after_bytes)} used by other processes "
            f"{stop_words}; short by {gib(ram.need_bytes - ram.available_bytes)}"
        )
    elif ram.need_bytes > policy.runtime_memory_max_bytes:
        shortfalls.append(
            f"needs {gib(ram.need_bytes)} RAM, above the {policy.runtime_unit} MemoryMax of "
            f"{gib(policy.runtime_memory_max_bytes)}"
        )
    else:
        lines.append(
            f"needs {gib(ram.need_bytes)} RAM (runtime {gib(ram.breakdown['runtime'])}, load buffer "
            f"{gib(ram.breakdown['load_buffer'])}, margin {gib(ram.breakdown['margin'])}), "
            f"{gib(ram.total_bytes)} total, {gib(ram.used_by_others_after_bytes)} used by other processes "
            f"{stop_words}: {gib(ram.free_after_bytes)} left"
        )
    cached_bytes = sum(f.bytes for f in files if f.cached)
    transfer_words = (
        f"transfers {gib(to_transfer)} ({gib(cached_bytes)} already cached) to "
        f"{policy.models_root.rstrip('/')}/"
    )
    if not disk.fits:
        shortfalls.append(
            f"{transfer_words} but the disk has {gib(disk.free_bytes)} free and keeps "
            f"{gib(disk.reserve_bytes)} in reserve; short by "
            f"{gib(disk.needed_bytes + disk.reserve_bytes - disk.free_bytes)}"
        )
    else:
        lines.append(f"{transfer_words}, {gib(disk.free_bytes)} free on disk")
    if port in holders:
        holder = ", ".join(holders[port])
        keeps = "not managed by this plan" if holder == "another process" else "which this plan keeps running"
        shortfalls.append(f"port {port} is in use by {holder}, {keeps}")
    else:
        lines.append(f"port {port} is free {stop_words}")
    return _Evaluation(
        action=action,
        option=option,
        port=port,
        stop_services=stops,
        gpu=gpu,
        ram=ram,
        disk=disk,
        files=tuple(files),
        lines=tuple(lines),
        shortfalls=tuple(shortfalls),
        cache_warnings=tuple(cache_warnings),
    )


def _describe_quantization(option: _Option) -> str:
    if option.quantization == "none":
        return "unquantized"
    if option.prequantized:
        return f"pre-quantized {option.quantization}"
    return "bnb-4bit (nf4 on load)"


def plan(manifest: Manifest, snapshot: InstanceSnapshot, request: DeployRequest, policy: Policy) -> Plan:
    """The deployment plan of `request` for `manifest` on the instance of `snapshot`."""
    if request.model is None:
        raise InvalidInput("planning needs a model (mode 'deploy')")
    if request.model != manifest.name:
        raise InvalidInput(f"the manifest is of {manifest.name!r}, the request asks for {request.model!r}")

    warnings: list[str] = list(manifest.warnings)
    if manifest.base is not None:
        warnings += [f"base {manifest.base.name}: {w}" for w in manifest.base.warnings]
    reasons: list[str] = []
    forced: list[str] = []  # shortfalls that no option can fix

    # Context reserve, clamped to what the model supports.
    tokens = request.context_tokens
    max_tokens = manifest.shape.max_position_embeddings
    if max_tokens is not None and tokens > max_tokens:
        warnings.append(
            f"context_tokens {tokens} is above the model's maximum {max_tokens}; reserving {max_tokens}"
        )
        tokens = max_tokens
    if manifest.shape.kv_elements_per_token() is None:
        warnings.append("config.json lacks layers/kv heads/head_dim: no KV cache reserved")

    if manifest.catalog is None:
        warnings.append(f"{manifest.name} is not in the catalog: deploying it generically")

    # 1. Action by size.
    flux = snapshot.service(policy.flux_unit)
    flux_active = flux is not None and flux.active
    size = manifest.weight_bytes
    small = size < policy.small_model_max_bytes
    size_words = f"{manifest.name} has {gib(size)} of weights"
    if small:
        preferred: Action = "coexist"
        reasons.append(
            f"{size_words}, under the {gib(policy.small_model_max_bytes)} small-model limit: "
            f"it runs beside {policy.flux_unit} on port {policy.coexist_port}"
            + ("" if flux_active else f" ({policy.flux_unit} is not running)")
        )
    else:
        preferred = "replace"
        if not flux_active:
            reasons.append(
                f"{size_words}, above the {gib(policy.small_model_max_bytes)} small-model limit: it takes "
                f"port {policy.replace_port} ({policy.flux_unit} is not running, nothing to stop)"
            )
        elif request.allow_stop_flux:
            reasons.append(
                f"{size_words}, above the {gib(policy.small_model_max_bytes)} small-model limit: "
                f"{policy.flux_unit} is stopped and the model takes port {policy.replace_port}"
            )
        else:
            preferred = "coexist"
            reasons.append(
                f"{size_words}, above the {gib(policy.small_model_max_bytes)} small-model limit, but "
                "allow_stop_flux is false: planning it beside "
                f"{policy.flux_unit} on port {policy.coexist_port}"
            )
    actions: list[Action] = [preferred]
    if preferred == "coexist" and small and flux_active and request.allow_stop_flux:
        actions.append("replace")

    # 2. Quantization options, in order of preference.
    plain = _Option("none", False, manifest)
    bnb = _Option("bnb-4bit", False, manifest)
    variant = manifest.awq_variant if policy.prefer_awq_variant else None
    awq = _Option("awq", True, variant) if variant is not None else None
    unquantized_need = sum(gpu_need(manifest, plain, tokens, policy).values())
    above = unquantized_need > policy.quantize_above_bytes
    threshold_words = (
        f"unquantized it needs {gib(unquantized_need)} GPU, "
        f"{'above' if above else 'within'} the {gib(policy.quantize_above_bytes)} quantization threshold"
    )
    options: list[_Option]
    if manifest.quantization is not None:
        kind = manifest.quantization.kind
        if kind is None:
            forced.append(
                f"config.json declares quantization {manifest.quantization.method!r}, which the runtime "
                "does not load (supported: awq, gptq, bitsandbytes)"
            )
            options = [plain]
        else:
            options = [_Option(kind, True, manifest)]
            reasons.append(f"the checkpoint is pre-quantized ({manifest.quantization.method}, "
                           f"{manifest.quantization.bits or '?'}-bit): loaded as stored")
        if request.force_quantize:
            warnings.append("force_quantize ignored: the checkpoint is already quantized")
    elif request.force_quantize:
        options = [bnb]
        reasons.append(f"force_quantize: bnb-4bit (nf4 on load); {threshold_words}")
    elif above:
        options = ([awq] if awq else []) + [bnb]
    else:
        options = [plain] + ([awq] if awq else []) + [bnb]

    # 3. The first (action, option) that fits; else the closest one, to explain the shortfall.
    evaluations = [
        _evaluate(manifest, snapshot, request, policy, action, option, tokens)
        for action in actions
        for option in options
    ]
    chosen = next((e for e in evaluations if e.fits and not forced), None)
    if chosen is None:
        last = [e for e in evaluations if e.action == actions[-1]]
        memory_ok = [e for e in last if e.gpu.fits and e.ram.fits and snapshot.gpus]
        chosen = memory_ok[0] if memory_ok else min(last, key=lambda e: e.gpu.need_bytes)
    option = chosen.option

    if chosen.action != preferred:
        reasons.append(
            f"it does not fit beside {policy.flux_unit}: {policy.flux_unit} is stopped and the model "
            f"takes port {chosen.port} instead"
        )
        warnings.append(f"{policy.flux_unit} will be stopped although {manifest.name} is a small model")
    if manifest.quantization is None and not request.force_quantize:
        if option.quantization == "none":
            reasons.append(f"no quantization: {threshold_words}")
        elif option.quantization == "awq":
            why = "" if above else " and does not fit"
            reasons.append(
                f"{threshold_words}{why}: deploying the pre-quantized AWQ variant {option.deploy.name}"
            )
        elif above:
            missing = (
                " and no AWQ variant is in the bucket"
                if awq is None
                else f" and the AWQ variant {awq.deploy.name} does not fit"
            )
            reasons.append(f"{threshold_words}{missing}: bnb-4bit (nf4 on load)")
        else:
            outcome = "is the only way to fit" if chosen.fits else "is the smallest form, and still short"
            reasons.append(
                f"{threshold_words} but does not fit unquantized: bnb-4bit (nf4 on load) {outcome}"
            )
        if above and awq is None and manifest.catalog and manifest.catalog.awq_variant:
            warnings.append(
                f"the catalog's AWQ variant {manifest.catalog.awq_variant} is not in the bucket; "
                "quantizing on load instead"
            )
    reasons.extend(chosen.lines)
    shortfalls = forced + list(chosen.shortfalls)
    warnings.extend(chosen.cache_warnings)

    if len(snapshot.gpus) > 1:
        warnings.append(f"{len(snapshot.gpus)} GPUs: the model is spread over them (device_map=auto)")
    if request.port is not None:
        rule_port = policy.coexist_port if chosen.action == "coexist" else policy.replace_port
        if request.port != rule_port:
            warnings.append(
                f"port {request.port} requested; the seed's port for {chosen.action} is {rule_port}"
            )
    declared = (manifest.base or manifest).shape.torch_dtype
    dtype = _dtype_for(manifest, option, policy)
    if declared not in (None, "bfloat16", "float16") and option.quantization not in ("awq", "gptq"):
        warnings.append(f"config.json declares {declared}; loading in {dtype}")
    runtime = snapshot.service(policy.runtime_unit)
    replaces_runtime = runtime is not None and runtime.active
    if replaces_runtime:
        warnings.append(f"the running {policy.runtime_unit} is replaced by this deployment")

    deploy = option.deploy
    root = policy.models_root.rstrip("/")
    base = deploy.base
    deployed = [deploy] if base is None else [base, deploy]
    host = policy.endpoint_host
    port = chosen.port
    fits = not shortfalls
    parameters = deploy.weights.parameters + (base.weights.parameters if base else 0)
    stops = list(chosen.stop_services)
    summary = (
        f"{manifest.name}: {chosen.action}"
        + (f" (stop {', '.join(stops)})" if stops else "")
        + f", deploy {deploy.name} {_describe_quantization(option)} on port {port}; "
        + f"GPU {gib(chosen.gpu.need_bytes)} of {gib(chosen.gpu.available_bytes)} available; "
        + ("fits" if fits else f"does not fit: {shortfalls[0]}")
    )
    return Plan(
        model=manifest.name,
        deploy_model=deploy.name,
        tier=manifest.catalog.tier if manifest.catalog else None,
        in_catalog=manifest.catalog is not None,
        source_uri=deploy.source_uri,
        base_model=base.name if base else None,
        base_source_uri=base.source_uri if base else None,
        base_model_path=f"{root}/{base.name}" if base else None,
        files=list(chosen.files),
        total_bytes=sum(f.bytes for f in chosen.files),
        bytes_to_transfer=chosen.disk.needed_bytes,
        skipped_files=[f.key for m in deployed for f in m.skipped],
        skipped_bytes=sum(f.bytes for m in deployed for f in m.skipped),
        action=chosen.action,
        stop_services=stops,
        replaces_runtime=replaces_runtime,
        quantization=option.quantization,
        prequantized=option.prequantized,
        dtype=dtype,
        context_tokens=tokens,
        parameters=parameters,
        port=port,
        unit=policy.runtime_unit,
        model_path=f"{root}/{deploy.name}",
        models_root=root,
        endpoints=Endpoints(
            status=f"http://{host}:{port}/status",
            health=f"http://{host}:{port}/health",
            generate=f"http://{host}:{port}/generate",
            openai_base=f"http://{host}:{port}/v1",
        ),
        gpu=chosen.gpu,
        ram=chosen.ram,
        disk=chosen.disk,
        fits=fits,
        reasons=reasons,
        shortfalls=shortfalls,
        warnings=warnings,
        summary=summary,
    )
