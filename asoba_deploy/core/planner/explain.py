"""Explaining: the plan's `reasons`, `shortfalls`, `warnings` and `summary` in plain words.

Every sentence is built from a `Decision` (and the inputs it was made from); nothing here
changes what is decided. Sizes are bytes; GiB = 2**30 in the words.
"""

from __future__ import annotations

from dataclasses import dataclass

from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.manifest import Manifest
from asoba_deploy.core.planner.decide import Decision, Evaluation
from asoba_deploy.core.planner.estimate import Option, gpu_memory_utilization
from asoba_deploy.core.policy import GIB, Policy
from asoba_deploy.core.requirement_sets import download_sentence, install_download
from asoba_deploy.core.snapshot import InstanceSnapshot, ServiceState


@dataclass(frozen=True)
class Explanation:
    reasons: list[str]
    shortfalls: list[str]
    warnings: list[str]
    summary: str


@dataclass(frozen=True)
class _Words:
    reasons: list[str]
    shortfalls: list[str]
    warnings: list[str]


def gib(value: int) -> str:
    """Bytes in GiB with one decimal, the unit of every sentence of a plan."""
    return f"{value / GIB:.1f} GiB"


def describe_quantization(option: Option) -> str:
    if option.quantization == "none":
        return "unquantized"
    if option.prequantized:
        return f"pre-quantized {option.quantization}"
    return "bnb-4bit (nf4 on load)"


def _input_warnings(manifest: Manifest, request: DeployRequest, decision: Decision) -> list[str]:
    warnings = list(manifest.warnings)
    if manifest.base is not None:
        warnings += [f"base {manifest.base.name}: {w}" for w in manifest.base.warnings]
    if decision.tokens < request.context_tokens:
        warnings.append(
            f"context_tokens {request.context_tokens} is above the model's maximum {decision.tokens}; "
            f"reserving {decision.tokens}"
        )
    if manifest.shape.kv_elements_per_token() is None:
        warnings.append("config.json lacks layers/kv heads/head_dim: no KV cache reserved")
    if manifest.catalog is None:
        warnings.append(f"{manifest.name} is not in the catalog: deploying it generically")
    return warnings


def _action_reason(manifest: Manifest, policy: Policy, decision: Decision) -> str:
    rule = decision.action.rule
    flux, limit = policy.flux_unit, gib(policy.small_model_max_bytes)
    size_words = f"{manifest.name} has {gib(manifest.weight_bytes)} of weights"
    if rule == "small":
        idle = "" if decision.action.flux_active else f" ({flux} is not running)"
        return (
            f"{size_words}, under the {limit} small-model limit: "
            f"it runs beside {flux} on port {policy.coexist_port}{idle}"
        )
    if rule == "large-flux-idle":
        return (
            f"{size_words}, above the {limit} small-model limit: it takes "
            f"port {policy.replace_port} ({flux} is not running, nothing to stop)"
        )
    if rule == "large-stop-flux":
        return (
            f"{size_words}, above the {limit} small-model limit: "
            f"{flux} is stopped and the model takes port {policy.replace_port}"
        )
    return (
        f"{size_words}, above the {limit} small-model limit, but allow_stop_flux is false: "
        f"planning it beside {flux} on port {policy.coexist_port}"
    )


def _threshold_words(policy: Policy, decision: Decision) -> str:
    quant = decision.quantization
    return (
        f"unquantized it needs {gib(quant.unquantized_need)} GPU, {'above' if quant.above else 'within'} "
        f"the {gib(policy.quantize_above_bytes)} quantization threshold"
    )


def _stored_or_forced(
    manifest: Manifest, request: DeployRequest, policy: Policy, decision: Decision
) -> _Words:
    """Reasons, shortfalls and warnings of a stored or forced quantization."""
    rule = decision.quantization.rule
    stored = manifest.quantization
    reasons: list[str] = []
    shortfalls: list[str] = []
    warnings: list[str] = []
    if rule == "unsupported" and stored is not None:
        shortfalls.append(
            f"config.json declares quantization {stored.method!r}, which the runtime "
            "does not load (supported: awq, gptq, bitsandbytes)"
        )
    elif rule == "prequantized" and stored is not None:
        reasons.append(
            f"the checkpoint is pre-quantized ({stored.method}, {stored.bits or '?'}-bit): loaded as stored"
        )
    elif rule == "forced":
        reasons.append(f"force_quantize: bnb-4bit (nf4 on load); {_threshold_words(policy, decision)}")
    if stored is not None and request.force_quantize:
        warnings.append("force_quantize ignored: the checkpoint is already quantized")
    return _Words(reasons, shortfalls, warnings)


def _fallback(manifest: Manifest, policy: Policy, decision: Decision) -> tuple[list[str], list[str]]:
    """Reasons and warnings when a small model replaces Flux after all."""
    chosen = decision.chosen
    if chosen.action == decision.action.preferred:
        return [], []
    flux = policy.flux_unit
    return (
        [f"it does not fit beside {flux}: {flux} is stopped and the model takes port {chosen.port} instead"],
        [f"{flux} will be stopped although {manifest.name} is a small model"],
    )


def _by_threshold(manifest: Manifest, policy: Policy, decision: Decision) -> tuple[list[str], list[str]]:
    """Reasons and warnings of a quantization chosen by the threshold and the fit."""
    quant, chosen = decision.quantization, decision.chosen
    if quant.rule not in ("above", "within"):
        return [], []
    words = _threshold_words(policy, decision)
    kind = chosen.option.quantization
    if kind == "none":
        reason = f"no quantization: {words}"
    elif kind == "awq":
        why = "" if quant.above else " and does not fit"
        reason = f"{words}{why}: deploying the pre-quantized AWQ variant {chosen.option.deploy.name}"
    elif quant.above:
        missing = (
            " and no AWQ variant is in the bucket"
            if quant.awq is None
            else f" and the AWQ variant {quant.awq.deploy.name} does not fit"
        )
        reason = f"{words}{missing}: bnb-4bit (nf4 on load)"
    else:
        outcome = "is the only way to fit" if chosen.fits else "is the smallest form, and still short"
        reason = f"{words} but does not fit unquantized: bnb-4bit (nf4 on load) {outcome}"
    warnings: list[str] = []
    if quant.above and quant.awq is None and manifest.catalog and manifest.catalog.awq_variant:
        warnings.append(
            f"the catalog's AWQ variant {manifest.catalog.awq_variant} is not in the bucket; "
            "quantizing on load instead"
        )
    return [reason], warnings


def _stop_words(chosen: Evaluation, snapshot: InstanceSnapshot, policy: Policy) -> str:
    if chosen.stop_services:
        return f"after stopping {', '.join(chosen.stop_services)}"
    flux = snapshot.service(policy.flux_unit)
    return f"with {policy.flux_unit} running" if flux is not None and flux.active else "on the instance"


def _gpu_sentence(chosen: Evaluation, tokens: int, after: str) -> tuple[bool, str]:
    gpu, b = chosen.gpu, chosen.gpu.breakdown
    detail = (
        f"weights {gib(b['weights'])}, KV cache {gib(b['kv_cache'])} for {tokens} tokens, "
        f"CUDA context {gib(b['cuda_context'])}, margin {gib(b['margin'])}"
    )
    if "engine_overhead" in b:
        detail += f", vLLM activations and CUDA graphs {gib(b['engine_overhead'])}"
    if not chosen.has_gpu:
        return False, (
            f"the instance reports no GPU; {chosen.option.deploy.name} needs "
            f"{gib(gpu.need_bytes)} of GPU memory"
        )
    others = f"{gib(gpu.used_by_others_after_bytes)} used by other processes {after}"
    if not gpu.fits:
        return False, (
            f"needs {gib(gpu.need_bytes)} GPU ({detail}) but only {gib(gpu.available_bytes)} is available: "
            f"{gib(gpu.total_bytes)} total, {others}; short by {gib(gpu.need_bytes - gpu.available_bytes)}"
        )
    return True, (
        f"needs {gib(gpu.need_bytes)} GPU ({detail}), {gib(gpu.total_bytes)} total, "
        f"{others}: {gib(gpu.free_after_bytes)} left"
    )


def _ram_sentence(chosen: Evaluation, policy: Policy, after: str) -> tuple[bool, str]:
    ram, b = chosen.ram, chosen.ram.breakdown
    others = f"{gib(ram.used_by_others_after_bytes)} used by other processes {after}"
    if not ram.fits:
        return False, (
            f"needs {gib(ram.need_bytes)} RAM but only {gib(ram.available_bytes)} is available: "
            f"{gib(ram.total_bytes)} total, {others}; short by {gib(ram.need_bytes - ram.available_bytes)}"
        )
    if not chosen.ram_within_memory_max:
        return False, (
            f"needs {gib(ram.need_bytes)} RAM, above the {policy.runtime_unit} MemoryMax of "
            f"{gib(policy.runtime_memory_max_bytes)}"
        )
    engine = f", vLLM engine process {gib(b['engine_process'])}" if "engine_process" in b else ""
    return True, (
        f"needs {gib(ram.need_bytes)} RAM (runtime {gib(b['runtime'])}, load buffer "
        f"{gib(b['load_buffer'])}, margin {gib(b['margin'])}{engine}), "
        f"{gib(ram.total_bytes)} total, {others}: {gib(ram.free_after_bytes)} left"
    )


def _disk_sentence(chosen: Evaluation, policy: Policy) -> tuple[bool, str]:
    disk = chosen.disk
    cached_bytes = sum(f.bytes for f in chosen.files if f.cached)
    transfer_words = (
        f"transfers {gib(disk.needed_bytes)} ({gib(cached_bytes)} already cached) to "
        f"{chosen.root.chosen.path.rstrip('/')}/"
    )
    if not disk.fits:
        if chosen.root.rule == "no-room" and len(chosen.root.options) > 1:
            return False, chosen.root.reason
        return False, (
            f"{transfer_words} but the disk has {gib(disk.free_bytes)} free and keeps "
            f"{gib(disk.reserve_bytes)} in reserve; short by "
            f"{gib(disk.needed_bytes + disk.reserve_bytes - disk.free_bytes)}"
        )
    return True, f"{transfer_words}, {gib(disk.free_bytes)} free on disk"


def _port_sentence(chosen: Evaluation, after: str) -> tuple[bool, str]:
    if not chosen.port_holders:
        return True, f"port {chosen.port} is free {after}"
    holder = ", ".join(chosen.port_holders)
    keeps = "not managed by this plan" if holder == "another process" else "which this plan keeps running"
    return False, f"port {chosen.port} is in use by {holder}, {keeps}"


def _resident_label(service: ServiceState) -> str:
    name = service.model or "an unnamed model"
    memory = f"{gib(service.gpu_memory_bytes)} GPU, {gib(service.rss_bytes)} RAM"
    return f"{name} ({service.unit}, port {service.port}, {memory})"


def _last_use(service: ServiceState) -> str:
    if service.last_used_at is not None:
        return f"last used {service.last_used_at:%Y-%m-%dT%H:%M:%SZ}"
    if service.since is not None:
        return f"not used since it started {service.since:%Y-%m-%dT%H:%M:%SZ}"
    return "never used"


def _resident_words(
    request: DeployRequest, policy: Policy, decision: Decision
) -> tuple[list[str], list[str]]:
    """Where the model runs among the resident ones, what stays, what is (or would be) evicted:
    (reasons, shortfalls)."""
    placement, chosen = decision.placement, decision.chosen
    reasons: list[str] = []
    joined = placement.joins
    if joined is not None:
        reasons.append(
            f"resident keep: {request.model} is a LoRA adapter of the base {joined.unit} already serves "
            f"({joined.model or 'an unnamed model'}, port {chosen.port}): it joins that process as one "
            f"more adapter instead of loading the base again ({gib(chosen.gpu_saved_bytes)} GPU saved); "
            "the unit restarts to load it"
        )
    elif placement.unit != policy.runtime_unit:
        kept = "its own unit" if placement.replaced is not None else "a unit of its own"
        reasons.append(
            f"resident {request.resident}: {request.model} runs as {placement.unit} on port {chosen.port} "
            f"({kept}; {policy.runtime_unit} keeps serving)"
        )
    if decision.switch.reason:
        reasons.append(decision.switch.reason)
    evicted = {s.unit for s in chosen.evicted}
    staying = [s for s in placement.residents if s.unit not in evicted]
    if staying:
        reasons.append(
            "keeps serving, its measured memory counted: " + "; ".join(_resident_label(s) for s in staying)
        )
    if chosen.evicted:
        reasons.append(
            'evict "lru": stops the least recently used '
            + "; ".join(f"{_resident_label(s)}, {_last_use(s)}" for s in chosen.evicted)
            + " to make room"
        )
    shortfalls: list[str] = []
    if decision.would_evict and not chosen.evicted:
        how = (
            'give "evict": "lru" to stop them'
            if request.resident == "keep"
            else 'deploy with "resident": "keep", "evict": "lru", or undeploy them'
        )
        shortfalls.append(
            "fits only if these resident models stop, least recently used first: "
            + "; ".join(f"{_resident_label(s)}, {_last_use(s)}" for s in decision.would_evict)
            + f"; {how}"
        )
    elif not chosen.fits and placement.residents and not chosen.evicted:
        shortfalls.append(
            "would not fit even with every resident model stopped: "
            + "; ".join(_resident_label(s) for s in placement.residents)
        )
    return reasons, shortfalls


def _engine_reasons(policy: Policy, decision: Decision) -> list[str]:
    """Why this engine, and with vLLM the budget it is given (what it preallocates)."""
    chosen = decision.chosen
    reasons = [chosen.engine.reason]
    if chosen.engine.engine == "vllm":
        utilization = gpu_memory_utilization(chosen.gpu, policy)
        if utilization is not None:
            budget = round(utilization * chosen.gpu.total_bytes)
            reasons.append(
                f"vLLM gets gpu_memory_utilization {utilization:g} ({gib(budget)} of "
                f"{gib(chosen.gpu.total_bytes)}: the plan's GPU need), max_model_len {decision.tokens}, "
                f"max_num_seqs {policy.max_num_seqs}"
            )
    return reasons


def _install_reason(snapshot: InstanceSnapshot, decision: Decision) -> str:
    """What the install of the chosen engine's venv downloads (core.requirement_sets)."""
    engine = decision.chosen.engine.engine
    return download_sentence(engine, install_download(engine, snapshot), snapshot)


def _resources(snapshot: InstanceSnapshot, policy: Policy, decision: Decision) -> tuple[list[str], list[str]]:
    """The chosen evaluation's checks, in order GPU, RAM, disk, port: (passed, failed)."""
    chosen = decision.chosen
    after = _stop_words(chosen, snapshot, policy)
    checks = [
        _gpu_sentence(chosen, decision.tokens, after),
        _ram_sentence(chosen, policy, after),
        _disk_sentence(chosen, policy),
        _port_sentence(chosen, after),
    ]
    return [text for ok, text in checks if ok], [text for ok, text in checks if not ok]


def _deployment_warnings(
    manifest: Manifest, snapshot: InstanceSnapshot, request: DeployRequest, policy: Policy, decision: Decision
) -> list[str]:
    chosen = decision.chosen
    root = chosen.root.chosen.path.rstrip("/")
    warnings = [
        f"{root}/{stale.name} holds a different copy ({gib(stale.bytes)}, {stale.files} files); "
        "counting every file as to be transferred"
        for stale in chosen.stale_copies
    ]
    warnings += chosen.root.warnings
    if len(snapshot.gpus) > 1:
        warnings.append(f"{len(snapshot.gpus)} GPUs: the model is spread over them (device_map=auto)")
    if request.port is not None:
        rule_port = policy.coexist_port if chosen.action == "coexist" else policy.replace_port
        if request.port != rule_port:
            warnings.append(
                f"port {request.port} requested; the seed's port for {chosen.action} is {rule_port}"
            )
    declared = (manifest.base or manifest).shape.torch_dtype
    if declared not in (None, "bfloat16", "float16") and chosen.option.quantization not in ("awq", "gptq"):
        warnings.append(f"config.json declares {declared}; loading in {decision.dtype}")
    if decision.replaces_runtime:
        warnings.append(f"the running {decision.placement.unit} is replaced by this deployment")
    if decision.placement.joins is not None:
        joined = decision.placement.joins
        warnings.append(
            f"{joined.unit} restarts to load the adapter: {joined.model or 'what it serves'} does not "
            "answer until it is healthy again"
        )
    warnings += _package_warnings(snapshot, decision)
    return warnings


def _package_warnings(snapshot: InstanceSnapshot, decision: Decision) -> list[str]:
    """What the transformers engine needs for the format and the runtime's Python lacks."""
    runtime, chosen = snapshot.runtime_python, decision.chosen
    kind = chosen.option.quantization
    if runtime is None or chosen.engine.engine != "transformers":
        return []
    missing = None
    if kind in ("awq", "gptq") and runtime.gptqmodel is None:
        missing = "gptqmodel"
    elif kind in ("bnb-4bit", "bnb-8bit") and runtime.bitsandbytes is None:
        missing = "bitsandbytes"
    if missing is None:
        return []
    return [
        f"{missing} is not importable by {runtime.python}: transformers loads {kind} through it, "
        "so the runtime's install must bring it"
    ]


def _summary(manifest: Manifest, decision: Decision, shortfalls: list[str]) -> str:
    chosen = decision.chosen
    option, stops = chosen.option, chosen.stop_services
    return (
        f"{manifest.name}: {chosen.action}"
        + (f" (stop {', '.join(stops)})" if stops else "")
        + (f" (evict {', '.join(s.unit for s in chosen.evicted)})" if chosen.evicted else "")
        + f", deploy {option.deploy.name} {describe_quantization(option)} on port {chosen.port} "
        + f"with {chosen.engine.engine}; "
        + f"GPU {gib(chosen.gpu.need_bytes)} of {gib(chosen.gpu.available_bytes)} available; "
        + ("fits" if not shortfalls else f"does not fit: {shortfalls[0]}")
    )


def explain(
    manifest: Manifest, snapshot: InstanceSnapshot, request: DeployRequest, policy: Policy, decision: Decision
) -> Explanation:
    """The words of `decision`, in the order a reader follows it: action, quantization, resources."""
    stored = _stored_or_forced(manifest, request, policy, decision)
    fallback_reasons, fallback_warnings = _fallback(manifest, policy, decision)
    threshold_reasons, threshold_warnings = _by_threshold(manifest, policy, decision)
    passed, failed = _resources(snapshot, policy, decision)
    resident_reasons, resident_shortfalls = _resident_words(request, policy, decision)
    reasons = [
        _action_reason(manifest, policy, decision),
        *stored.reasons,
        *fallback_reasons,
        *threshold_reasons,
        *_engine_reasons(policy, decision),
        _install_reason(snapshot, decision),
        *resident_reasons,
        *passed,
    ]
    shortfalls = stored.shortfalls + resident_shortfalls + failed
    warnings = [
        *_input_warnings(manifest, request, decision),
        *stored.warnings,
        *fallback_warnings,
        *threshold_warnings,
        *_deployment_warnings(manifest, snapshot, request, policy, decision),
    ]
    return Explanation(reasons, shortfalls, warnings, _summary(manifest, decision, shortfalls))
