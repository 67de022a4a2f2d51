"""The Plan and its parts: the planner's output, as the dry run returns it.

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
    files               [{key, bytes, local_path, cached}] the files the sync must have; the
                        execution's plan lists the first PLAN_FILES_LISTED (`listed()`: the state
                        carries at most 256 KiB), the counts below cover them all
    file_count          how many files the sync must have
    cached_bytes        bytes of those already cached on the instance
    source_files        what the sync of source_uri must find there: its files plus skipped keys
    source_bytes        their bytes
    base_source_files   adapters: what the sync of base_source_uri must find there (0 otherwise)
    base_source_bytes   their bytes
    total_bytes         sum of files' bytes
    bytes_to_transfer   bytes of files not already cached on the instance
    skipped_files       S3 keys under the model folder(s) the runtime does not need (other weight
                        formats beside safetensors, original/, hidden folders): a sync may exclude them
    skipped_bytes       their total size (not in bytes_to_transfer)
    skipped_count       how many (skipped_files is cut like files)
    action              "coexist" (beside Flux) | "replace" (Flux stopped)
    stop_services       systemd units to stop before installing (Flux for replace, if active)
    replaces_runtime    whether a running asoba-inference unit is replaced
    quantization        one of core.quantization.KINDS: "none" | "bnb-4bit" | "bnb-8bit" | "awq" | "gptq"
    prequantized        true: the checkpoint is stored quantized (load as is);
                        false with bnb-4bit: quantize on load (BitsAndBytesConfig nf4)
    dtype               compute dtype: "bfloat16" | "float16"
    context_tokens      the KV reserve the estimate used (clamped to the model's maximum)
    engine              the runtime's serving engine: "vllm" | "transformers" (core.engines)
    engine_reason       why that engine, one sentence
    load_from           "stream" (the runtime streams the safetensors from S3 into memory while the
                        sync's disk copy completes) | "disk" (sync, then load) (core.loading)
    load_reason         why, one sentence
    gpu_memory_utilization  vllm: the share of total GPU memory vLLM may take (its whole budget:
                        the plan's GPU need, never more than what is available beside the
                        services that stay); null with transformers
    max_model_len       prompt + completion tokens per sequence (= context_tokens; CONTEXT_LENGTH)
    max_num_seqs        sequences generated together (vLLM's max_num_seqs, the transformers
                        engine's batch; MAX_BATCH_SIZE), sharing the KV reserve
    install_download    what the install step downloads for the engine's venv: the top-level
                        packages of its requirement set (core.requirement_sets) when the instance
                        has no venv of that engine and set yet (the first install builds it),
                        empty when install reuses one
    parameters          logical parameter count (base + adapter)
    port, unit          TCP port and systemd unit of the runtime: asoba-inference.service (the
                        primary) or asoba-inference@<model>.service (a resident, core.residents)
    resident            the execution's "replace" | "keep": whether the other models stay
    resident_models     [{model, unit, port, gpu_memory_bytes, rss_bytes, last_used_at}] the runtime
                        units that keep serving beside this one (their measured memory is counted)
    evict_units         resident units the evict step stops first (`evict: lru`), least recently
                        used first; empty when nothing is evicted
    would_evict         when the model fits only if residents stop: those units (LRU first), whether
                        or not the input lets the plan stop them
    strategy            how the stable endpoint moves to this model: none (nothing served it, or the
                        model stays beside), stop-start or blue-green (planner rule 7);
                        strategy_reason says why
    switch              {stable_port, old_unit, old_port, old_model} when the router takes part: the
                        switch step points the stable port at this unit (blue-green: after the old
                        one drained); null when the unit holds its port itself
    joins               a LoRA adapter joining the process that serves its base (`resident: keep`):
                        {unit, serving, model_path, base_model_path, adapters, gpu_saved_bytes}; the
                        unit keeps its env but ADAPTERS ("name=/path,..." after the join); null: none
    model_path          <models_root>/<deploy_model> (the adapter's folder for adapters)
    models_root         the models root chosen among the candidates (planner.roots): the fastest
                        measured one with room, or the one already holding the model
    models_root_reason  why that root, one sentence (each candidate's device, free bytes, rate)
    time_to_healthy     {estimate_s, transfer_s, install_s, load_s, warmup_s, basis}: seconds from
                        the change phase to a healthy service, and the rates and sizes used
                        (planner.timing); null in plans recorded before it
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

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from asoba_deploy.core.engines import Engine
from asoba_deploy.core.loading import LoadFrom
from asoba_deploy.core.quantization import Quantization

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "Action",
    "AdapterJoin",
    "DiskEstimate",
    "Dtype",
    "Endpoints",
    "MemoryEstimate",
    "Plan",
    "PlanFile",
    "Quantization",
    "ResidentModel",
    "SwitchPlan",
    "TimeToHealthy",
]

Action = Literal["coexist", "replace"]
Dtype = Literal["bfloat16", "float16"]

PLAN_SCHEMA_VERSION: Literal[1] = 1
PLAN_FILES_LISTED = 50  # files (and skipped keys) an execution's plan lists by name


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


class TimeToHealthy(BaseModel):
    """The plan's prediction (planner.timing); the ledger records the measured side."""

    model_config = ConfigDict(frozen=True)

    estimate_s: float = Field(ge=0)
    transfer_s: float = Field(ge=0)
    install_s: float = Field(ge=0)
    load_s: float = Field(ge=0)
    warmup_s: float = Field(ge=0)
    # measured before the plan (planner.timing); the steps' own overhead after it
    elapsed_s: float = Field(default=0.0, ge=0)
    steps_s: float = Field(default=0.0, ge=0)
    basis: dict[str, Any] = Field(default_factory=dict)


class ResidentModel(BaseModel):
    """A runtime unit that keeps serving beside the deployment (core.residents)."""

    model_config = ConfigDict(frozen=True)

    model: str | None
    unit: str
    port: int | None
    gpu_memory_bytes: int = Field(ge=0)
    rss_bytes: int = Field(ge=0)
    last_used_at: datetime | None = None


class SwitchPlan(BaseModel):
    """The stable endpoint's move to the new unit through the router (planner rule 7)."""

    model_config = ConfigDict(frozen=True)

    stable_port: int
    old_unit: str | None = None  # the unit serving the stable endpoint now (None: nothing)
    old_port: int | None = None
    old_model: str | None = None


class AdapterJoin(BaseModel):
    """A LoRA adapter served by the process that already holds its base (planner rule 6)."""

    model_config = ConfigDict(frozen=True)

    unit: str
    serving: str | None  # the unit's MODEL_NAME, which it keeps serving
    model_path: str | None  # its MODEL_PATH
    base_model_path: str | None  # its BASE_MODEL_PATH (it serves an adapter of the base)
    adapters: str  # ADAPTERS after the join: "name=/path,..." (this adapter last)
    gpu_saved_bytes: int = Field(ge=0)  # the base's GPU bytes not loaded a second time


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
    file_count: int = 0
    cached_bytes: int = 0
    skipped_count: int = 0
    source_files: int = 0
    source_bytes: int = 0
    base_source_files: int = 0
    base_source_bytes: int = 0
    action: Action
    stop_services: list[str]
    replaces_runtime: bool
    quantization: Quantization
    prequantized: bool
    dtype: Dtype
    context_tokens: int
    # Added with the engines; the defaults read older plans (ledger records) as transformers ones.
    engine: Engine = "transformers"
    engine_reason: str = ""
    # Added with streaming (core.loading); older plans loaded from disk.
    load_from: LoadFrom = "disk"
    load_reason: str = ""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=1)
    max_num_seqs: int = Field(default=8, ge=1)
    install_download: list[str] = Field(default_factory=list)
    parameters: int
    port: int
    unit: str
    # Added with resident models (core.residents); older plans replaced the primary.
    resident: Literal["replace", "keep"] = "replace"
    resident_models: list[ResidentModel] = Field(default_factory=list)
    evict_units: list[str] = Field(default_factory=list)
    would_evict: list[str] = Field(default_factory=list)
    joins: AdapterJoin | None = None
    strategy: Literal["none", "stop-start", "blue-green"] = "none"
    strategy_reason: str = ""
    switch: SwitchPlan | None = None
    model_path: str
    models_root: str
    models_root_reason: str = ""
    time_to_healthy: TimeToHealthy | None = None
    endpoints: Endpoints
    gpu: MemoryEstimate
    ram: MemoryEstimate
    disk: DiskEstimate
    fits: bool
    reasons: list[str]
    shortfalls: list[str]
    warnings: list[str]
    summary: str

    @model_validator(mode="before")
    @classmethod
    def _count(cls, data: Any) -> Any:
        """A plan built from the full lists (the planner, older records) counts them here."""
        if not isinstance(data, dict) or "file_count" in data:
            return data
        files = [f if isinstance(f, PlanFile) else PlanFile.model_validate(f) for f in data.get("files", [])]
        skipped = list(data.get("skipped_files", []))

        def counted(uri: object) -> tuple[int, int]:
            # Skipped keys carry no sizes: their bytes count for the folder that has any of them.
            parts = str(uri or "").split("/", 3)
            if len(parts) < 4 or not parts[3]:
                return 0, 0
            source = [f for f in files if f.key.startswith(parts[3])]
            skipped_here = [k for k in skipped if k.startswith(parts[3])]
            skipped_bytes = int(data.get("skipped_bytes", 0)) if skipped_here else 0
            return len(source) + len(skipped_here), sum(f.bytes for f in source) + skipped_bytes

        source_files, source_bytes = counted(data.get("source_uri"))
        base_files, base_bytes = counted(data.get("base_source_uri"))
        computed = {
            "file_count": len(files),
            "cached_bytes": sum(f.bytes for f in files if f.cached),
            "skipped_count": len(skipped),
            "source_files": source_files,
            "source_bytes": source_bytes,
            "base_source_files": base_files,
            "base_source_bytes": base_bytes,
        }
        return {**computed, **data}  # counts the caller gives (the planner's exact ones) win

    def listed(self, limit: int = PLAN_FILES_LISTED) -> Plan:
        """The plan as an execution carries it: the first `limit` files and skipped keys by name."""
        return self.model_copy(
            update={"files": self.files[:limit], "skipped_files": self.skipped_files[:limit]}
        )
