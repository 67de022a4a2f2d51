"""The planner's policy: the seed's thresholds and names, overridable by environment.

Sizes are binary: 1 GiB = 2**30 bytes, the unit of `nvidia-smi` (MiB) and `free -g`.
The seed's "23 GB GPU" is an A10G's 23,028 MiB (22.5 GiB); its "62 GB RAM" is `free -g`.

| env var                | field                    | default                                   |
|------------------------|--------------------------|-------------------------------------------|
| SMALL_MODEL_MAX_GIB    | small_model_max_bytes    | 3 (weights below it coexist with Flux)    |
| QUANTIZE_ABOVE_GIB     | quantize_above_bytes     | 20 (unquantized GPU need above it: 4-bit) |
| COEXIST_PORT           | coexist_port             | 8001                                      |
| REPLACE_PORT           | replace_port             | 8000                                      |
| FLUX_UNIT              | flux_unit                | flux-api.service                          |
| RUNTIME_UNIT           | runtime_unit             | asoba-inference.service                   |
| MODELS_ROOT            | models_root              | /opt/models                               |
| DEFAULT_DTYPE          | default_dtype            | bfloat16 (or float16)                     |
| KV_CACHE_BYTES         | kv_cache_bytes           | 2 (bytes per KV element)                  |
| NF4_BITS_PER_PARAM     | nf4_bits_per_param       | 4.5                                       |
| CUDA_CONTEXT_GIB       | cuda_context_bytes       | 0.5                                       |
| MEMORY_MARGIN_FRACTION | memory_margin_fraction   | 0.10 (of weights + KV; of RAM need)       |
| RUNTIME_RAM_GIB        | runtime_ram_bytes        | 2 (python + torch + CUDA libraries)       |
| RUNTIME_MEMORY_MAX_GIB | runtime_memory_max_bytes | 32 (the unit's MemoryMax)                 |
| DISK_RESERVE_GIB       | disk_reserve_bytes       | 2 (kept free on disk)                     |
| ENDPOINT_HOST          | endpoint_host            | localhost                                 |
| PREFER_AWQ_VARIANT     | prefer_awq_variant       | true                                      |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asoba_deploy.core.contracts import Port, describe_validation_error
from asoba_deploy.core.errors import InvalidInput

GIB = 1 << 30
MIB = 1 << 20

Bytes = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Dtype = Literal["bfloat16", "float16"]


class Policy(BaseModel):
    """Thresholds and names the planner applies; defaults are the seed's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    small_model_max_bytes: Bytes = 3 * GIB
    quantize_above_bytes: Bytes = 20 * GIB
    coexist_port: Port = 8001
    replace_port: Port = 8000
    flux_unit: str = "flux-api.service"
    runtime_unit: str = "asoba-inference.service"
    models_root: str = "/opt/models"
    default_dtype: Dtype = "bfloat16"
    kv_cache_bytes: Annotated[int, Field(ge=1, le=4)] = 2
    nf4_bits_per_param: Annotated[float, Field(gt=0, le=16)] = 4.5
    cuda_context_bytes: Bytes = GIB // 2
    memory_margin_fraction: Fraction = 0.10
    runtime_ram_bytes: Bytes = 2 * GIB
    runtime_memory_max_bytes: Bytes = 32 * GIB
    disk_reserve_bytes: Bytes = 2 * GIB
    endpoint_host: str = "localhost"
    prefer_awq_variant: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Policy:
        """The policy with every variable of the table above that is set in `environ`."""
        values: dict[str, object] = {}
        for env_name, (field, scale) in _ENV_FIELDS.items():
            raw = environ.get(env_name)
            if raw is None or raw == "":
                continue
            if scale is None:
                values[field] = raw
                continue
            try:
                values[field] = round(float(raw) * scale)
            except ValueError:
                raise InvalidInput(f"{env_name}={raw!r}: expected a number") from None
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise InvalidInput(f"planner policy: {describe_validation_error(error)}") from None


# env var -> (field, multiplier for GiB-valued variables; None: pass the string through)
_ENV_FIELDS: dict[str, tuple[str, int | None]] = {
    "SMALL_MODEL_MAX_GIB": ("small_model_max_bytes", GIB),
    "QUANTIZE_ABOVE_GIB": ("quantize_above_bytes", GIB),
    "COEXIST_PORT": ("coexist_port", None),
    "REPLACE_PORT": ("replace_port", None),
    "FLUX_UNIT": ("flux_unit", None),
    "RUNTIME_UNIT": ("runtime_unit", None),
    "MODELS_ROOT": ("models_root", None),
    "DEFAULT_DTYPE": ("default_dtype", None),
    "KV_CACHE_BYTES": ("kv_cache_bytes", None),
    "NF4_BITS_PER_PARAM": ("nf4_bits_per_param", None),
    "CUDA_CONTEXT_GIB": ("cuda_context_bytes", GIB),
    "MEMORY_MARGIN_FRACTION": ("memory_margin_fraction", None),
    "RUNTIME_RAM_GIB": ("runtime_ram_bytes", GIB),
    "RUNTIME_MEMORY_MAX_GIB": ("runtime_memory_max_bytes", GIB),
    "DISK_RESERVE_GIB": ("disk_reserve_bytes", GIB),
    "ENDPOINT_HOST": ("endpoint_host", None),
    "PREFER_AWQ_VARIANT": ("prefer_awq_variant", None),
}

ENV_VARS: tuple[str, ...] = tuple(_ENV_FIELDS)
