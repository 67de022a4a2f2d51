"""The planner's policy: the seed's thresholds and names, from the deployment's configuration.

Sizes are binary: 1 GiB = 2**30 bytes, the unit of `nvidia-smi` (MiB) and `free -g`.
The seed's "23 GB GPU" is an A10G's 23,028 MiB (22.5 GiB); its "62 GB RAM" is `free -g`.

The configurable fields (thresholds, ports, Flux's unit, the models root) take their
defaults from `asoba_deploy.core.config`, the one definition; `Policy.from_config` fills
them from a deployment's context. The rest are the planner's own estimating constants.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from asoba_deploy.core.config import RUNTIME_UNIT, DeployConfig, InstanceRoots, Serving, Thresholds
from asoba_deploy.core.contracts import Port

GIB = 1 << 30
MIB = 1 << 20

Bytes = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Dtype = Literal["bfloat16", "float16"]


_THRESHOLDS = Thresholds()
_SERVING = Serving()
_CONFIG_DEFAULTS = {name: field.default for name, field in DeployConfig.model_fields.items()}


class Policy(BaseModel):
    """Thresholds and names the planner applies; defaults are the seed's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    small_model_max_bytes: Bytes = round(_THRESHOLDS.small_model_gb * GIB)
    quantize_above_bytes: Bytes = round(_THRESHOLDS.quantize_above_gpu_gb * GIB)
    coexist_port: Port = _THRESHOLDS.coexist_port
    replace_port: Port = _THRESHOLDS.replace_port
    flux_unit: str = _CONFIG_DEFAULTS["flux_service"]
    runtime_unit: str = RUNTIME_UNIT
    models_root: str = InstanceRoots().models_root
    default_dtype: Dtype = "bfloat16"
    kv_cache_bytes: Annotated[int, Field(ge=1, le=4)] = 2
    nf4_bits_per_param: Annotated[float, Field(gt=0, le=16)] = 4.5
    cuda_context_bytes: Bytes = GIB // 2
    memory_margin_fraction: Fraction = 0.10
    runtime_ram_bytes: Bytes = 2 * GIB
    runtime_memory_max_bytes: Bytes = 32 * GIB  # the unit's MemoryMax
    disk_reserve_bytes: Bytes = 2 * GIB
    endpoint_host: str = "localhost"
    prefer_awq_variant: bool = True
    # Serving (config.Serving): the concurrency the runtime is sized for.
    max_num_seqs: Annotated[int, Field(ge=1)] = _SERVING.max_num_seqs
    # vLLM's own GPU allocations inside its gpu_memory_utilization budget, beyond weights, KV
    # cache and CUDA context: the profile run's peak activations (at its default
    # max_num_batched_tokens) and, counted in the budget since vLLM 0.21, the CUDA graph pool
    # (vllm/v1/worker/gpu_worker.py, determine_available_memory). A fixed estimate: both are a
    # few hundred MiB for the 0.1-15 B models here.
    vllm_overhead_bytes: Bytes = GIB
    # vLLM's engine core runs in a second process with torch and the CUDA libraries of its own.
    vllm_ram_bytes: Bytes = 2 * GIB
    # gpu_memory_utilization is rounded up to this step (vLLM reads it as a float fraction).
    utilization_step: Annotated[float, Field(gt=0, le=0.1)] = 0.001
    # The instance's sustained rate to S3 (config.link_gbps), for the plan's time_to_healthy.
    link_bytes_per_s: Annotated[float, Field(gt=0)] = _CONFIG_DEFAULTS["link_gbps"] * 1e9 / 8
    # One instance step's own cost on the path (config.step_overhead_seconds).
    step_overhead_s: Annotated[float, Field(ge=0)] = _CONFIG_DEFAULTS["step_overhead_seconds"]
    # The load_from context key (core.loading): auto, or stream / disk forced.
    load_from: Literal["auto", "stream", "disk"] = _CONFIG_DEFAULTS["load_from"]

    @classmethod
    def from_config(cls, config: DeployConfig) -> Policy:
        """The policy of one deployment's context."""
        thresholds = config.thresholds
        return cls(
            small_model_max_bytes=round(thresholds.small_model_gb * GIB),
            quantize_above_bytes=round(thresholds.quantize_above_gpu_gb * GIB),
            coexist_port=thresholds.coexist_port,
            replace_port=thresholds.replace_port,
            flux_unit=config.flux_service,
            models_root=config.instance_roots.models_root,
            max_num_seqs=config.serving.max_num_seqs,
            link_bytes_per_s=config.link_gbps * 1e9 / 8,
            step_overhead_s=config.step_overhead_seconds,
            load_from=config.load_from,
        )
