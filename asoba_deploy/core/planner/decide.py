"""Deciding: the seed's rules, applied to the estimates.

1. Action. Weights under `small_model_max_bytes` run beside Flux (`coexist`, the coexist port);
   larger ones stop Flux (`replace`, the replace port). A small model that does not fit
   beside Flux falls back to `replace` when `allow_stop_flux`; a large one with
   `allow_stop_flux: false` is planned beside Flux and fits only if room is left.
2. Quantization. `force_quantize` gives bnb-4bit; a pre-quantized checkpoint (AWQ, GPTQ,
   bitsandbytes 4/8-bit) is loaded as stored. Otherwise the full unquantized GPU need is
   compared with `quantize_above_bytes`: above it, the pre-quantized AWQ variant when the
   bucket has one, else bnb-4bit on load; at or under it, `none` unless only a quantized
   form fits (AWQ variant, then bnb-4bit).
3. Fit. The first (action, option) whose GPU, RAM, disk and port checks all pass; else the
   closest one, so the plan can say what is short.
4. Engine. Each option is estimated with the engine that would serve it (`core.engines`): vLLM
   where the GPU, the format and the runtime's packages allow it, whose own overheads the GPU
   and RAM needs then include; transformers otherwise.
5. Residents (`core.residents`). With `resident: replace` the new model takes the primary unit's
   place (or its own unit's, when it already runs as a resident). With `keep`, while the primary
   serves another model, it runs as a resident unit of its own on the first free port above the
   seed's, every other runtime unit keeps its measured memory, and when it does not fit the least
   recently used residents that would make room are named, and stopped only with `evict: lru`.
6. Adapters join their base. With `keep`, a LoRA adapter whose base an active runtime unit's
   process already holds (its MODEL_PATH, or BASE_MODEL_PATH when it serves an adapter, names the
   base's folder) joins that process as one more ADAPTERS entry instead of loading the base again:
   only the adapter's own memory is needed; the unit restarts with it, on its own port and engine.
7. Switching (`strategy`, with `resident: replace`). The stable endpoint is the seed's port; the
   router (instance_runtime.router) holds it once a blue-green switch put it there. Blue-green:
   the new model starts as a unit of its own on a spare port beside the old one, both counted,
   and the switch step points the stable port at it, lets the old one's requests finish and
   stops it. Stop-start: the old one goes first (in place without a router; behind the router
   it is evicted, and the router is pointed at the new unit). `auto`: blue-green when old and
   new fit together, stop-start otherwise. A redeploy of the model the router already serves is
   a stop-start of its unit. With nothing serving, `blue-green` puts the router in front.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Literal, get_args

from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.engines import Engine, EngineChoice, choose_engine
from asoba_deploy.core.manifest import Manifest
from asoba_deploy.core.planner.estimate import (
    ADAPTER_BYTES_PER_PARAM,
    Option,
    gpu_need,
    memory_estimate,
    ram_need,
)
from asoba_deploy.core.planner.models import Action, DiskEstimate, Dtype, MemoryEstimate, PlanFile
from asoba_deploy.core.planner.roots import RootChoice, choose_root
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.residents import free_port, is_runtime_unit, model_of_unit, resident_unit
from asoba_deploy.core.snapshot import CachedModel, InstanceSnapshot, ServiceState

# Which branch of rule 1 applied (explain words each one).
ActionRule = Literal["small", "large-flux-idle", "large-stop-flux", "large-keep-flux"]
# Which branch of rule 2 applied: a stored quantization (supported or not), forced, or by threshold.
QuantRule = Literal["prequantized", "unsupported", "forced", "above", "within"]


@dataclass(frozen=True)
class ActionChoice:
    rule: ActionRule
    preferred: Action
    actions: tuple[Action, ...]  # in the order they are tried
    flux_active: bool


@dataclass(frozen=True)
class QuantChoice:
    rule: QuantRule
    options: tuple[Option, ...]  # in order of preference
    awq: Option | None  # the AWQ variant, when the bucket has one and the policy prefers it
    unquantized_need: int  # GPU bytes of the model unquantized
    above: bool  # unquantized_need above the quantization threshold


@dataclass(frozen=True)
class Placement:
    """Which runtime unit the new model runs in, and the runtime units that keep serving."""

    unit: str
    replaced: ServiceState | None  # what runs in `unit` now, replaced in place (None: a new unit)
    residents: tuple[ServiceState, ...]  # the other active runtime units: they stay
    # rule 6: the unit whose process the adapter joins (it stays, its memory counted; None: none)
    joins: ServiceState | None = None


Strategy = Literal["none", "stop-start", "blue-green"]


@dataclass(frozen=True)
class Switch:
    """How the stable endpoint moves to the new model (rule 7)."""

    strategy: Strategy  # none: no model serves the stable endpoint now, or the model stays beside
    reason: str
    # the router's stable port when the router takes part (it starts or is pointed at the new
    # unit by the switch step); None: the unit holds its port itself, as the seed's does
    stable_port: int | None = None
    old: ServiceState | None = None  # the unit serving the stable endpoint now


NO_SWITCH = Switch("none", "")


@dataclass(frozen=True)
class Evaluation:
    """One (action, option) estimated against the instance, and which checks pass."""

    action: Action
    option: Option
    port: int
    stop_services: tuple[str, ...]
    gpu: MemoryEstimate
    ram: MemoryEstimate
    disk: DiskEstimate
    files: tuple[PlanFile, ...]
    stale_copies: tuple[CachedModel, ...]  # cached copies matching nothing: all re-transferred
    has_gpu: bool
    ram_within_memory_max: bool
    port_holders: tuple[str, ...]  # who keeps the port after the stops; empty: it is free
    engine: EngineChoice  # the engine that serves this option; the needs include its overheads
    root: RootChoice  # the models root the files go to (planner.roots); files and disk are its
    evicted: tuple[ServiceState, ...] = ()  # resident models stopped to make room (`evict: lru`)
    gpu_saved_bytes: int = 0  # rule 6: GPU bytes of the base not loaded again (a join)

    @property
    def gpu_fits(self) -> bool:
        return self.has_gpu and self.gpu.fits

    @property
    def ram_fits(self) -> bool:
        return self.ram.fits and self.ram_within_memory_max

    @property
    def fits(self) -> bool:
        return self.gpu_fits and self.ram_fits and self.disk.fits and not self.port_holders


@dataclass(frozen=True)
class Decision:
    tokens: int  # the KV reserve, clamped to the model's maximum
    action: ActionChoice
    quantization: QuantChoice
    chosen: Evaluation
    dtype: Dtype
    replaces_runtime: bool
    placement: Placement
    # the least recently used residents whose stop would make room when nothing else does
    # (empty: none would, or it fits); stopped only with `evict: lru` (then chosen.evicted)
    would_evict: tuple[ServiceState, ...] = ()
    switch: Switch = NO_SWITCH  # rule 7

    @property
    def fits(self) -> bool:
        return self.quantization.rule != "unsupported" and self.chosen.fits


def context_tokens(manifest: Manifest, request: DeployRequest) -> int:
    maximum = manifest.shape.max_position_embeddings
    return min(request.context_tokens, maximum) if maximum is not None else request.context_tokens


def choose_action(
    manifest: Manifest, snapshot: InstanceSnapshot, request: DeployRequest, policy: Policy
) -> ActionChoice:
    flux = snapshot.service(policy.flux_unit)
    flux_active = flux is not None and flux.active
    rule: ActionRule
    preferred: Action
    if manifest.weight_bytes < policy.small_model_max_bytes:
        rule, preferred = "small", "coexist"
    elif not flux_active:
        rule, preferred = "large-flux-idle", "replace"
    elif request.allow_stop_flux:
        rule, preferred = "large-stop-flux", "replace"
    else:
        rule, preferred = "large-keep-flux", "coexist"
    actions: tuple[Action, ...] = (preferred,)
    if rule == "small" and flux_active and request.allow_stop_flux:
        actions += ("replace",)  # a small model that does not fit beside Flux may replace it
    return ActionChoice(rule, preferred, actions, flux_active)


def engine_for(option: Option, snapshot: InstanceSnapshot, policy: Policy) -> EngineChoice:
    """The engine that would serve `option` on the instance (core.engines.choose_engine)."""
    return choose_engine(
        option.quantization,
        adapter=option.deploy.adapter is not None,
        gpus=snapshot.gpus,
        runtime=snapshot.runtime_python,
    )


def quantization_options(
    manifest: Manifest,
    request: DeployRequest,
    policy: Policy,
    tokens: int,
    snapshot: InstanceSnapshot | None = None,
) -> QuantChoice:
    plain = Option("none", False, manifest)
    bnb = Option("bnb-4bit", False, manifest)
    variant = manifest.awq_variant if policy.prefer_awq_variant else None
    awq = Option("awq", True, variant) if variant is not None else None
    plain_engine = engine_for(plain, snapshot, policy).engine if snapshot is not None else "transformers"
    unquantized_need = sum(gpu_need(manifest, plain, tokens, policy, plain_engine).values())
    above = unquantized_need > policy.quantize_above_bytes
    rule: QuantRule
    if manifest.quantization is not None:
        kind = manifest.quantization.kind
        rule = "unsupported" if kind is None else "prequantized"
        options = [plain] if kind is None else [Option(kind, True, manifest)]
    elif request.force_quantize:
        rule, options = "forced", [bnb]
    elif above:
        rule, options = "above", ([awq] if awq else []) + [bnb]
    else:
        rule, options = "within", [plain] + ([awq] if awq else []) + [bnb]
    return QuantChoice(rule, tuple(options), awq, unquantized_need, above)


def stops_for(action: Action, snapshot: InstanceSnapshot, policy: Policy) -> tuple[str, ...]:
    flux = snapshot.service(policy.flux_unit)
    return (policy.flux_unit,) if action == "replace" and flux is not None and flux.active else ()


def leaving_services(
    stops: Sequence[str],
    snapshot: InstanceSnapshot,
    placement: Placement,
    evicted: Sequence[ServiceState] = (),
) -> list[ServiceState]:
    """The services whose memory and ports are freed: the stopped ones, the unit the new model
    replaces in place, and the evicted residents."""
    leaving = [s for s in (snapshot.service(u) for u in stops) if s is not None]
    if placement.replaced is not None:
        leaving.append(placement.replaced)
    return leaving + list(evicted)


def weights_folder(service: ServiceState) -> str | None:
    """The folder name of the base weights a runtime unit's process holds (None: not reported)."""
    path = service.base_model_path or service.model_path
    return PurePosixPath(path).name if path else None


def joinable(
    manifest: Manifest, request: DeployRequest, snapshot: InstanceSnapshot, policy: Policy
) -> ServiceState | None:
    """The active runtime unit whose process an adapter joins (rule 6), the primary first."""
    base = manifest.base
    if request.resident != "keep" or manifest.adapter is None or base is None:
        return None
    units = sorted(
        (s for s in snapshot.services if is_runtime_unit(s.unit) and s.active),
        key=lambda s: (s.unit != policy.runtime_unit, s.unit),
    )
    return next((s for s in units if weights_folder(s) == base.name), None)


def place(
    request: DeployRequest, snapshot: InstanceSnapshot, policy: Policy, manifest: Manifest | None = None
) -> Placement:
    """The unit of the new model (rules 5 and 6)."""
    runtimes = {s.unit: s for s in snapshot.services if is_runtime_unit(s.unit)}
    primary = runtimes.get(policy.runtime_unit)
    own = resident_unit(request.model) if request.model is not None else policy.runtime_unit
    joined = joinable(manifest, request, snapshot, policy) if manifest is not None else None
    if joined is not None:
        staying = tuple(s for s in runtimes.values() if s.active and s.unit != joined.unit)
        return Placement(joined.unit, None, staying, joins=joined)
    if own in runtimes:
        unit = own  # already a resident: redeployed in its own unit
    elif request.resident == "keep" and (
        (
            primary is not None
            and primary.active
            and primary.model != request.model  # unknown (None): kept too, never replaced by guess
        )
        or (snapshot.router is not None and snapshot.router.active)  # it holds the seed's port
    ):
        unit = own
    else:
        unit = policy.runtime_unit
    staying = tuple(s for s in runtimes.values() if s.active and s.unit != unit)
    return Placement(unit, runtimes.get(unit), staying)


def port_for(
    request: DeployRequest, action: Action, policy: Policy, placement: Placement, held: Sequence[int] = ()
) -> int:
    """The seed's port for the primary unit; a resident keeps its own, or takes the first port
    above the seed's that nothing holds (the seed's two stay theirs)."""
    if placement.joins is not None and placement.joins.port is not None:
        return placement.joins.port  # the process it joins answers for it
    if request.port:
        return request.port
    if model_of_unit(placement.unit) is None:  # the primary
        return policy.coexist_port if action == "coexist" else policy.replace_port
    if placement.replaced is not None and placement.replaced.port is not None:
        return placement.replaced.port
    taken = {*held, policy.coexist_port, policy.replace_port}
    found = free_port(taken, first=policy.coexist_port + 1)
    return found if found is not None else policy.coexist_port


def _service_port(service: ServiceState, policy: Policy) -> int | None:
    if service.port is not None:
        return service.port
    if service.unit == policy.flux_unit:
        return policy.replace_port  # the seed's Flux listens on 8000
    return None


def port_holders(snapshot: InstanceSnapshot, policy: Policy, leaving_units: set[str]) -> dict[int, list[str]]:
    """Who holds each port once the stops ran: active services (minus those leaving), and
    listening sockets no service accounts for."""
    claims: dict[int, list[str]] = {}
    for service in snapshot.services:
        service_port = _service_port(service, policy)
        if service.active and service_port is not None:
            claims.setdefault(service_port, []).append(service.unit)
    for listening in snapshot.listening_ports:
        claims.setdefault(listening, ["another process"])
    return {p: kept for p, units in claims.items() if (kept := [u for u in units if u not in leaving_units])}


def evaluate(
    manifest: Manifest,
    snapshot: InstanceSnapshot,
    request: DeployRequest,
    policy: Policy,
    action: Action,
    option: Option,
    tokens: int,
    placement: Placement,
    evicted: tuple[ServiceState, ...] = (),
) -> Evaluation:
    stops = stops_for(action, snapshot, policy)
    leaving = leaving_services(stops, snapshot, placement, evicted)
    engine = engine_for(option, snapshot, policy)
    gpu_parts = gpu_need(manifest, option, tokens, policy, engine.engine)
    ram_parts = ram_need(option, policy, engine.engine)
    saved = 0
    if placement.joins is not None:
        # rule 6: the process holds the base (and its KV cache) already; the adapter comes on top
        engine = joined_engine(placement.joins, engine)
        alone = sum(gpu_need(manifest, option, tokens, policy, engine.engine).values())
        gpu_parts, ram_parts = adapter_needs(option, policy)
        saved = max(0, alone - sum(gpu_parts.values()))
    gpu = memory_estimate(
        gpu_parts,
        snapshot.gpu_total_bytes,
        snapshot.gpu_used_bytes,
        sum(s.gpu_memory_bytes for s in leaving),
    )
    ram = memory_estimate(
        ram_parts,
        snapshot.ram_total_bytes,
        max(0, snapshot.ram_total_bytes - snapshot.ram_available_bytes),
        sum(s.rss_bytes for s in leaving),
    )
    deploy = option.deploy
    root = choose_root([deploy] if deploy.base is None else [deploy.base, deploy], snapshot, policy)
    holders = port_holders(snapshot, policy, {s.unit for s in leaving})
    port = port_for(request, action, policy, placement, list(holders))
    return Evaluation(
        action=action,
        option=option,
        port=port,
        stop_services=stops,
        gpu=gpu,
        ram=ram,
        disk=root.chosen.disk,
        files=root.chosen.files,
        stale_copies=root.chosen.stale,
        has_gpu=bool(snapshot.gpus),
        ram_within_memory_max=ram.need_bytes <= policy.runtime_memory_max_bytes,
        # a joined process holds its own port: that is where the adapter answers
        port_holders=tuple(
            u for u in holders.get(port, ()) if placement.joins is None or u != placement.joins.unit
        ),
        engine=engine,
        root=root,
        evicted=evicted,
        gpu_saved_bytes=saved,
    )


def adapter_needs(option: Option, policy: Policy) -> tuple[dict[str, int], dict[str, int]]:
    """GPU and RAM breakdowns of an adapter joining a process that holds its base: its own
    weights (PEFT keeps them in fp32) and their margin; in RAM, its largest file while loading."""
    adapter = option.deploy.weights
    weights = adapter.float_elements * ADAPTER_BYTES_PER_PARAM + adapter.quantized.stored_bytes
    margin = math.ceil(weights * policy.memory_margin_fraction)
    load = adapter.largest_file_bytes
    # the process's KV cache, CUDA context and runtime are there already: zero, not left out
    return (
        {"weights": weights, "kv_cache": 0, "cuda_context": 0, "margin": margin},
        {"runtime": 0, "load_buffer": load, "margin": math.ceil(load * policy.memory_margin_fraction)},
    )


def joined_engine(joined: ServiceState, chosen: EngineChoice) -> EngineChoice:
    """The engine of the process an adapter joins: the one it runs, whatever a new one would be."""
    if joined.engine in get_args(Engine):
        engine: Engine = joined.engine  # type: ignore[assignment]
        return EngineChoice(engine, f"joins {joined.unit}, whose {engine} process serves the base")
    return chosen


def least_recently_used(residents: Sequence[ServiceState]) -> list[ServiceState]:
    """Residents, the least recently used first: by their last generation, else their start
    (never asked since it started), ties by unit name."""
    never = datetime.min.replace(tzinfo=UTC)

    def last_use(service: ServiceState) -> datetime:
        moment = service.last_used_at or service.since or never
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    return sorted(residents, key=lambda s: (last_use(s), s.unit))


def pick(evaluations: Sequence[Evaluation], last_action: Action, blocked: bool) -> Evaluation:
    """The first evaluation that fits (none when `blocked`); else, among the last action's,
    the first whose memory fits, or the smallest GPU need, to explain the shortfall."""
    chosen = next((e for e in evaluations if e.fits and not blocked), None)
    if chosen is not None:
        return chosen
    last = [e for e in evaluations if e.action == last_action]
    memory_ok = [e for e in last if e.gpu_fits and e.ram.fits]
    return memory_ok[0] if memory_ok else min(last, key=lambda e: e.gpu.need_bytes)


def dtype_for(manifest: Manifest, option: Option, policy: Policy) -> Dtype:
    if option.quantization in ("awq", "gptq"):
        return "float16"  # the AWQ/GPTQ kernels compute in fp16
    declared = (manifest.base or manifest).shape.torch_dtype
    if declared == "bfloat16":
        return "bfloat16"
    if declared == "float16":
        return "float16"
    return policy.default_dtype


def stable_endpoint(
    snapshot: InstanceSnapshot, policy: Policy
) -> tuple[ServiceState | None, int | None, bool]:
    """Who serves the stable endpoint now, on which port, and whether the router fronts it."""
    router = snapshot.router
    if router is not None and router.active:
        backend = snapshot.service(router.backend.unit) if router.backend is not None else None
        return (backend if backend is not None and backend.active else None), router.port, True
    primary = snapshot.service(policy.runtime_unit)
    if primary is not None and primary.active:
        return primary, primary.port, False
    return None, None, False


def _beside(unit: str, snapshot: InstanceSnapshot) -> Placement:
    """`unit` (a resident model's) placed beside every active runtime unit, the old one included."""
    runtimes = {s.unit: s for s in snapshot.services if is_runtime_unit(s.unit)}
    staying = tuple(s for s in runtimes.values() if s.active and s.unit != unit)
    return Placement(unit, runtimes.get(unit), staying)


def decide(
    manifest: Manifest, snapshot: InstanceSnapshot, request: DeployRequest, policy: Policy
) -> Decision:
    tokens = context_tokens(manifest, request)
    action = choose_action(manifest, snapshot, request, policy)
    quantization = quantization_options(manifest, request, policy, tokens, snapshot)
    placement = place(request, snapshot, policy, manifest)
    blocked = quantization.rule == "unsupported"
    # a joining adapter stops nothing: the process it joins runs beside whatever runs now
    actions: Sequence[Action] = ("coexist",) if placement.joins is not None else action.actions

    def best(where: Placement, evicted: tuple[ServiceState, ...] = ()) -> Evaluation:
        evaluations = [
            evaluate(manifest, snapshot, request, policy, a, option, tokens, where, evicted)
            for a in actions
            for option in quantization.options
        ]
        # An unsupported stored quantization blocks every option; the plan still shows the closest.
        return pick(evaluations, actions[-1], blocked=blocked)

    placement, chosen, switch = _switch(request, snapshot, policy, placement, best)
    would_evict: tuple[ServiceState, ...] = ()
    if not chosen.fits and not blocked and placement.residents and switch.strategy == "none":
        # the fewest least recently used residents whose stop makes room, if any does
        order = least_recently_used(placement.residents)
        for count in range(1, len(order) + 1):
            candidate = best(placement, tuple(order[:count]))
            if candidate.fits:
                would_evict = candidate.evicted
                if request.evict == "lru":
                    chosen = candidate
                break
    replaced = placement.replaced
    return Decision(
        tokens=tokens,
        action=action,
        quantization=quantization,
        chosen=chosen,
        dtype=dtype_for(manifest, chosen.option, policy),
        replaces_runtime=replaced is not None and replaced.active,
        placement=placement,
        would_evict=would_evict,
        switch=switch,
    )


def _switch(
    request: DeployRequest,
    snapshot: InstanceSnapshot,
    policy: Policy,
    placement: Placement,
    best: Callable[[Placement, tuple[ServiceState, ...]], Evaluation],
) -> tuple[Placement, Evaluation, Switch]:
    """Rule 7: where the model goes and how the stable endpoint moves to it."""
    default = best(placement, ())
    if request.resident != "replace" or placement.joins is not None or request.model is None:
        return placement, default, NO_SWITCH
    old, stable_port, routed = stable_endpoint(snapshot, policy)
    own = resident_unit(request.model)
    if old is None:
        if request.strategy != "blue-green" and not routed:
            return placement, default, NO_SWITCH
        # nothing serves: the router goes in front of a unit of the model's own (or, already there
        # with no backend answering, is pointed at it)
        where = _beside(own, snapshot)
        chosen = best(where, ())
        port = stable_port or (policy.coexist_port if chosen.action == "coexist" else policy.replace_port)
        reason = f"blue-green: nothing serves port {port}; the router goes in front of {own}"
        return where, chosen, Switch("blue-green", reason, port, None)
    if old.unit == own or (not routed and old.model == request.model):
        # the same model again: its own unit restarts (the router, if any, keeps the port)
        reason = f"stop-start: {request.model} is redeployed in its own unit {old.unit}"
        return placement, default, Switch("stop-start", reason, None, old)
    beside = _beside(own, snapshot)
    together = best(beside, ())
    if routed:
        # behind the router the old unit is evicted first for a stop-start
        stop_start_where, stop_start = beside, best(beside, (old,))
    else:
        stop_start_where, stop_start = placement, default
    label = f"{old.model or 'an unnamed model'} ({old.unit})"
    if request.strategy == "blue-green" or (request.strategy == "auto" and together.fits):
        if together.fits:
            reason = (
                f"blue-green: {request.model} starts as {own} beside {label}, which serves until the switch"
            )
        else:
            reason = (
                f"blue-green asked: {request.model} and {label} do not fit together; "
                'give "strategy": "stop-start" (or auto) to stop the old model first'
            )
        if not routed:
            reason += (
                f"; the router takes port {stable_port} over from {old.unit} (a gap of the moment "
                "its listener closes, measured as gap_s; later switches drop nothing)"
            )
        return beside, together, Switch("blue-green", reason, stable_port, old)
    why = "asked" if request.strategy == "stop-start" else "old and new do not fit together"
    reason = f"stop-start ({why}): {label} stops before {request.model} starts; the downtime is measured"
    return stop_start_where, stop_start, Switch("stop-start", reason, stable_port if routed else None, old)
