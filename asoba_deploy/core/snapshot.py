"""The instance snapshot: what the collect-resources SSM document reports.

The document prints this model as one JSON line; `InstanceSnapshot.model_json_schema()`
is the schema both sides agree on. All sizes are bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NonNegative = Field(ge=0)


class GpuDevice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    index: int = Field(ge=0)
    name: str
    memory_total_bytes: int = NonNegative
    memory_used_bytes: int = NonNegative
    # nvidia-smi's compute_cap, "8.6" on an A10G; None: not reported (drivers before 510).
    compute_capability: str | None = Field(default=None, pattern=r"^[0-9]{1,2}\.[0-9]{1,2}$")

    @property
    def capability(self) -> tuple[int, int] | None:
        """The compute capability as (major, minor), None when not reported."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


class ServiceState(BaseModel):
    """One systemd unit as the instance sees it."""

    model_config = ConfigDict(extra="ignore")

    unit: str
    # systemctl's ActiveState: active, inactive, failed, activating, deactivating, unknown
    state: str
    main_pid: int | None = None
    rss_bytes: int = NonNegative
    gpu_memory_bytes: int = NonNegative
    port: int | None = None
    # A runtime unit (the primary or a resident model's, core.residents), from its env file and
    # systemd; None for other units or when not reported.
    model: str | None = None  # MODEL_NAME
    model_path: str | None = None  # MODEL_PATH: the folder it serves (an adapter's, with a base)
    base_model_path: str | None = None  # BASE_MODEL_PATH: the unit serves a LoRA adapter of it
    # ADAPTERS: more adapters of the same base its process serves, "name=/path,..." (None: none)
    adapters: str | None = None
    engine: str | None = None  # ENGINE
    quantization: str | None = None  # QUANTIZATION
    since: datetime | None = None  # systemd's ActiveEnterTimestamp (active units)
    # the runtime's /status last_request_at: when it last answered a generation (None: never, or
    # not reachable); the least recently used model is the one evicted first
    last_used_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.state in ("active", "activating", "reloading")


class CachedModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    bytes: int = NonNegative
    files: int = NonNegative
    # The models root holding the copy; None: the snapshot's models_root.
    root: str | None = None
    # Optional (added for the planner): path relative to the model folder -> size in bytes.
    # With it the plan counts exactly what a sync will fetch; without it only a copy whose
    # total bytes and file count both match the bucket counts as cached.
    file_sizes: dict[str, int] = Field(default_factory=dict)


# sysfs's model of the block devices an EC2 instance sees (/sys/block/<dev>/device/model).
NVME_INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"
EBS_MODEL = "Amazon Elastic Block Store"
DiskKind = Literal["nvme-instance-store", "ebs", "unknown"]


def disk_kind(device_model: str | None) -> DiskKind:
    """What a device is, from its sysfs model string (anything else, tmpfs/overlay included: unknown)."""
    model = (device_model or "").strip()
    if model == NVME_INSTANCE_STORE_MODEL:
        return "nvme-instance-store"
    if model == EBS_MODEL:
        return "ebs"
    return "unknown"


class ModelsRootInfo(BaseModel):
    """One candidate models root (the context's models_roots), as collect-resources measured it.

    EBS volume type and provisioned throughput are not readable from inside the instance (only
    ec2:DescribeVolumes knows them): the measured write rate is what the planner goes by.
    """

    model_config = ConfigDict(extra="ignore")

    path: str
    exists: bool = False  # False: measured at `probed_at`, the nearest existing parent
    probed_at: str = ""
    device: str = ""  # the mount's source (/dev/nvme1n1, overlay, tmpfs)
    fstype: str = ""
    device_model: str = ""  # sysfs device/model, "" when not a block device or not readable
    device_serial: str = ""  # sysfs device/serial: an EBS volume's id without its dash
    free_bytes: int = NonNegative
    probe_bytes: int = Field(default=0, ge=0)  # what the write probe wrote
    write_bytes_per_s: int | None = Field(default=None, ge=0)  # None: not measured
    read_bytes_per_s: int | None = Field(default=None, ge=0)
    probe_error: str | None = None  # why there is no rate

    @property
    def kind(self) -> DiskKind:
        return disk_kind(self.device_model)

    @property
    def volume_id(self) -> str | None:
        """The EBS volume id ("vol-0abc..."), from the NVMe serial "vol0abc..."."""
        serial = self.device_serial.strip()
        if self.kind == "ebs" and serial.startswith("vol") and not serial.startswith("vol-"):
            return f"vol-{serial[3:]}"
        return serial if self.kind == "ebs" and serial else None


class RuntimePython(BaseModel):
    """What the runtime's interpreter can import: the engines and kernels a plan may choose.

    Probed with importlib (find_spec + metadata versions, nothing heavy imported) in the installed
    runtime venv when there is one, else in the instance's base Python. A version is None when
    the package is not importable there.
    """

    model_config = ConfigDict(extra="ignore")

    python: str  # the interpreter probed
    source: Literal["runtime-venv", "base-python"]
    python_version: str | None = None
    torch: str | None = None
    vllm: str | None = None
    bitsandbytes: str | None = None
    gptqmodel: str | None = None
    # The requirement sets' distributions it has (name -> version; collect-resources' Packages);
    # None: not reported.
    packages: dict[str, str] | None = None
    # The Run:ai model streamer and its S3 backend: what LOAD_FROM=stream imports (core.loading).
    runai_model_streamer: str | None = None
    runai_model_streamer_s3: str | None = None


class RuntimeVenv(BaseModel):
    """One venv the install step built: RuntimeRoot/venvs/<hash>, complete (its marker written).

    Built once per engine's requirement set and BasePython (ssm_documents/install.yaml);
    `requirements_sha256` is core.requirement_sets.requirements_sha256 of the set it installed.
    """

    model_config = ConfigDict(extra="ignore")

    hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    engine: str = ""  # "vllm" | "transformers"; "" when the marker does not say
    requirements_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    current: bool = False  # RuntimeRoot/venv links to it


class RouterBackend(BaseModel):
    """The runtime unit the router forwards the stable port to (EnvDir/router.json)."""

    port: int
    model: str
    unit: str
    generation: int = 0


class RouterState(BaseModel):
    """The stable-endpoint router (blue-green switches): its unit, stable port and backend."""

    unit: str
    state: str
    port: int | None = None
    backend: RouterBackend | None = None

    @property
    def active(self) -> bool:
        return self.state in ("active", "activating", "reloading")


class InstanceSnapshot(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: Literal[1] = 1
    hostname: str
    collected_at: datetime
    cpus: int = Field(ge=1)
    ram_total_bytes: int = NonNegative
    ram_available_bytes: int = NonNegative
    gpus: list[GpuDevice] = Field(default_factory=list)
    services: list[ServiceState] = Field(default_factory=list)
    # the stable-endpoint router, when one was installed (None: the primary holds the port itself)
    router: RouterState | None = None
    listening_ports: list[int] = Field(default_factory=list)
    models_root: str
    disk_free_bytes: int = NonNegative
    # Each candidate models root, in the context's order (None: an older collect-resources; the
    # planner then knows models_root and disk_free_bytes only).
    models_roots: list[ModelsRootInfo] | None = None
    # The most recently changed copies only (stdout is cut at 24,000 characters); the planner
    # reads the copy of the model it deploys. The totals count every folder (None: not reported).
    cached_models: list[CachedModel] = Field(default_factory=list)
    cached_models_total: int | None = Field(default=None, ge=0)
    cached_total_bytes: int | None = Field(default=None, ge=0)
    runtime_version: str | None = None
    # The runtime's Python and the packages it can import (None: not reported, or the probe failed).
    runtime_python: RuntimePython | None = None
    # The install step's venvs (None: not reported, an older collect-resources); the first few
    # listed, the total counting them all.
    runtime_venvs: list[RuntimeVenv] | None = None
    runtime_venvs_total: int | None = Field(default=None, ge=0)
    # What the instance could not report (e.g. nvidia-smi present but the driver unreachable).
    warnings: list[str] = Field(default_factory=list)

    def service(self, unit: str) -> ServiceState | None:
        for service in self.services:
            if service.unit == unit:
                return service
        return None

    def cached(self, model: str, root: str | None = None) -> CachedModel | None:
        """The copy of `model` under `root` (default: models_root)."""
        where = (root or self.models_root).rstrip("/")
        for cached in self.cached_models:
            if cached.name == model and (cached.root or self.models_root).rstrip("/") == where:
                return cached
        return None

    @property
    def gpu_total_bytes(self) -> int:
        return sum(gpu.memory_total_bytes for gpu in self.gpus)

    @property
    def gpu_used_bytes(self) -> int:
        return sum(gpu.memory_used_bytes for gpu in self.gpus)
