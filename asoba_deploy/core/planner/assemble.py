"""`plan()`: validate the request, decide, explain, and put both into one `Plan`."""

from __future__ import annotations

from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.loading import choose_load
from asoba_deploy.core.manifest import Manifest
from asoba_deploy.core.planner.decide import Decision, decide
from asoba_deploy.core.planner.estimate import gpu_memory_utilization
from asoba_deploy.core.planner.explain import Explanation, explain
from asoba_deploy.core.planner.models import (
    AdapterJoin,
    Endpoints,
    Plan,
    Quantization,
    ResidentModel,
    SwitchPlan,
)
from asoba_deploy.core.planner.timing import time_to_healthy
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.quantization import KINDS
from asoba_deploy.core.requirement_sets import install_download
from asoba_deploy.core.snapshot import InstanceSnapshot


def plan(
    manifest: Manifest,
    snapshot: InstanceSnapshot,
    request: DeployRequest,
    policy: Policy,
    *,
    elapsed_s: float = 0.0,
) -> Plan:
    """The deployment plan of `request` for `manifest` on the instance of `snapshot`;
    `elapsed_s`: the execution's time before the plan, the first part of its time_to_healthy."""
    if request.model is None:
        raise InvalidInput("planning needs a model (mode 'deploy')")
    if request.load_from is not None:
        # the execution's own choice over the stack's load_from context key
        policy = policy.model_copy(update={"load_from": request.load_from})
    if request.model != manifest.name:
        raise InvalidInput(f"the manifest is of {manifest.name!r}, the request asks for {request.model!r}")
    decision = decide(manifest, snapshot, request, policy)
    words = explain(manifest, snapshot, request, policy, decision)
    download = install_download(decision.chosen.engine.engine, snapshot)
    planned = _to_plan(manifest, request, policy, decision, words, download)
    planned = _with_load_source(planned, snapshot, policy, request.load_from is not None)
    planned = _with_time_to_healthy(planned, decision, snapshot, policy, elapsed_s)
    return _faster_load(planned, decision, snapshot, policy, elapsed_s)


def _faster_load(
    planned: Plan, decision: Decision, snapshot: InstanceSnapshot, policy: Policy, elapsed_s: float
) -> Plan:
    """Where the runtime could stream and nothing forces it, the plan streams only when that is
    the faster way to healthy: on a slow link beside a fast disk, sync-then-load wins (the
    streamer and the sync would share the link)."""
    if planned.load_from != "stream" or policy.load_from == "stream" or planned.time_to_healthy is None:
        return planned
    from_disk = _with_time_to_healthy(
        planned.model_copy(update={"load_from": "disk"}), decision, snapshot, policy, elapsed_s
    )
    streamed, disk = planned.time_to_healthy, from_disk.time_to_healthy
    assert disk is not None
    if disk.estimate_s >= streamed.estimate_s:
        return planned.model_copy(
            update={
                "load_reason": f"{planned.load_reason} (~{streamed.estimate_s:.0f} s to healthy, "
                f"~{disk.estimate_s:.0f} s with sync-then-load)"
            }
        )
    return from_disk.model_copy(
        update={
            "load_reason": f"disk: sync-then-load is faster here (~{disk.estimate_s:.0f} s to healthy "
            f"against ~{streamed.estimate_s:.0f} s streamed, the streamer sharing the "
            f"{policy.link_bytes_per_s * 8 / 1e9:g} Gbps link with the sync)"
        }
    )


def _with_load_source(
    planned: Plan, snapshot: InstanceSnapshot, policy: Policy, request_load_from: bool
) -> Plan:
    """The plan with load_from (stream or disk) and load_reason (core.loading)."""
    choice = choose_load(
        preference=policy.load_from,
        asked_by="the execution's load_from" if request_load_from else "the load_from context key",
        safetensors=all(f.key.endswith(".safetensors") for f in planned.files if _is_weight(f.key)),
        quantization=planned.quantization,
        adapter=planned.base_model is not None,
        engine=planned.engine,
        runtime=snapshot.runtime_python,
        install_download=planned.install_download,
        on_disk=planned.bytes_to_transfer == 0,
    )
    return planned.model_copy(update={"load_from": choice.load_from, "load_reason": choice.reason})


def _is_weight(key: str) -> bool:
    return key.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf"))


def _with_time_to_healthy(
    planned: Plan, decision: Decision, snapshot: InstanceSnapshot, policy: Policy, elapsed_s: float
) -> Plan:
    """The plan with its time_to_healthy, computed last: it reads `load_from` (stream or disk)
    wherever the plan decided it."""
    chosen = decision.chosen
    estimate = time_to_healthy(
        root=chosen.root.chosen,
        policy=policy,
        engine=chosen.engine.engine,
        transfer_bytes=planned.bytes_to_transfer,
        load_bytes=chosen.option.deploy.weight_bytes,
        install_builds=bool(planned.install_download),
        load_from=str(getattr(planned, "load_from", None) or "disk"),
        install_download=planned.install_download,
        runtime=snapshot.runtime_python,
        elapsed_s=elapsed_s,
        stops_services=bool(planned.stop_services),
    )
    return planned.model_copy(update={"time_to_healthy": estimate})


def _endpoints(host: str, port: int) -> Endpoints:
    return Endpoints(
        status=f"http://{host}:{port}/status",
        health=f"http://{host}:{port}/health",
        generate=f"http://{host}:{port}/generate",
        openai_base=f"http://{host}:{port}/v1",
    )


def _folder_files(manifest: Manifest) -> int:
    return len(manifest.files) + len(manifest.skipped)


def _folder_bytes(manifest: Manifest) -> int:
    return manifest.total_bytes + sum(f.bytes for f in manifest.skipped)


def _resident_models(decision: Decision) -> list[ResidentModel]:
    evicted = {s.unit for s in decision.chosen.evicted}
    return [
        ResidentModel(
            model=s.model,
            unit=s.unit,
            port=s.port,
            gpu_memory_bytes=s.gpu_memory_bytes,
            rss_bytes=s.rss_bytes,
            last_used_at=s.last_used_at,
        )
        for s in decision.placement.residents
        if s.unit not in evicted
    ]


def _joined_quantization(decision: Decision) -> Quantization | None:
    """A joining adapter runs in its base's quantization, the joined process's."""
    joined = decision.placement.joins
    if joined is not None and joined.quantization in KINDS:
        return joined.quantization  # type: ignore[return-value]
    return None


def _switch_plan(decision: Decision) -> SwitchPlan | None:
    switch = decision.switch
    if switch.stable_port is None:
        return None
    old = switch.old
    return SwitchPlan(
        stable_port=switch.stable_port,
        old_unit=old.unit if old else None,
        old_port=old.port if old else None,
        old_model=old.model if old else None,
    )


def _adapter_join(decision: Decision, name: str, path: str) -> AdapterJoin | None:
    """What the joined unit serves after the join: its own models and ADAPTERS plus this one."""
    joined = decision.placement.joins
    if joined is None:
        return None
    kept = [e for e in (joined.adapters or "").split(",") if e and e.partition("=")[0] != name]
    return AdapterJoin(
        unit=joined.unit,
        serving=joined.model,
        model_path=joined.model_path,
        base_model_path=joined.base_model_path,
        adapters=",".join([*kept, f"{name}={path}"]),
        gpu_saved_bytes=decision.chosen.gpu_saved_bytes,
    )


def _to_plan(
    manifest: Manifest,
    request: DeployRequest,
    policy: Policy,
    decision: Decision,
    words: Explanation,
    download: list[str],
) -> Plan:
    chosen = decision.chosen
    option = chosen.option
    deploy = option.deploy
    base = deploy.base
    deployed = [deploy] if base is None else [base, deploy]
    root = chosen.root.chosen.path.rstrip("/") or "/"
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
        # What each sync must find in S3: the folder's files, skipped ones included (it mirrors).
        source_files=_folder_files(deploy),
        source_bytes=_folder_bytes(deploy),
        base_source_files=_folder_files(base) if base else 0,
        base_source_bytes=_folder_bytes(base) if base else 0,
        action=chosen.action,
        stop_services=list(chosen.stop_services),
        replaces_runtime=decision.replaces_runtime,
        quantization=_joined_quantization(decision) or option.quantization,
        prequantized=option.prequantized,
        dtype=decision.dtype,
        context_tokens=decision.tokens,
        engine=chosen.engine.engine,
        engine_reason=chosen.engine.reason,
        gpu_memory_utilization=(
            gpu_memory_utilization(chosen.gpu, policy) if chosen.engine.engine == "vllm" else None
        ),
        max_model_len=decision.tokens,
        max_num_seqs=policy.max_num_seqs,
        install_download=download,
        parameters=deploy.weights.parameters + (base.weights.parameters if base else 0),
        port=chosen.port,
        unit=decision.placement.unit,
        resident=request.resident,
        resident_models=_resident_models(decision),
        evict_units=[s.unit for s in chosen.evicted],
        would_evict=[s.unit for s in decision.would_evict],
        joins=_adapter_join(decision, deploy.name, f"{root}/{deploy.name}"),
        strategy=decision.switch.strategy,
        strategy_reason=decision.switch.reason,
        switch=_switch_plan(decision),
        model_path=f"{root}/{deploy.name}",
        models_root=root,
        models_root_reason=chosen.root.reason,
        # behind the router, users call the stable port; the unit's own port is the backend's
        endpoints=_endpoints(policy.endpoint_host, decision.switch.stable_port or chosen.port),
        gpu=chosen.gpu,
        ram=chosen.ram,
        disk=chosen.disk,
        fits=decision.fits,
        reasons=words.reasons,
        shortfalls=words.shortfalls,
        warnings=words.warnings,
        summary=words.summary,
    )
