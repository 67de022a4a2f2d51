"""The planner's GPU estimate for a model folder on local disk (used by bench/gpu_check.py).

The planner reads S3; here a reader over a local folder answers the same calls, so the
estimate comes from the same code path (safetensors headers, config, the memory rules).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asoba_deploy.core.catalog import builtin_catalog
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.manifest import read_manifest
from asoba_deploy.core.planner import plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import ObjectInfo
from asoba_deploy.core.snapshot import GpuDevice, InstanceSnapshot

REPO_ROOT = Path(__file__).resolve().parents[1]


class LocalFolderReader:
    """`core.s3.S3Reader` over a folder: `<root>/<key>`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def bucket(self) -> str:
        return "local"

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        found = []
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix):
                found.append(ObjectInfo(key=key, size=path.stat().st_size))
        return found

    def prefix_exists(self, prefix: str) -> bool:
        return bool(self.list_objects(prefix))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with (self.root / key).open("rb") as handle:
            handle.seek(start)
            return handle.read(length)

    def read_object(self, key: str, max_bytes: int) -> bytes | None:
        path = self.root / key
        if not path.is_file():
            return None
        if path.stat().st_size > max_bytes:
            raise InvalidInput(f"{key} is larger than {max_bytes} bytes")
        return path.read_bytes()


def gpu_estimate(
    folder: Path, quantization: str, gpu_total_bytes: int, context_tokens: int = 4096
) -> dict[str, Any]:
    """The planner's GPU need for `folder` served with `quantization` (none or bnb-4bit)."""
    reader = LocalFolderReader(folder.parent)
    manifest = read_manifest(reader, "", folder.name, builtin_catalog())
    snapshot = InstanceSnapshot(
        hostname="gpu-check",
        collected_at=datetime.now(UTC),
        cpus=16,
        ram_total_bytes=128 * 1024**3,
        ram_available_bytes=120 * 1024**3,
        gpus=[GpuDevice(index=0, name="gpu", memory_total_bytes=gpu_total_bytes, memory_used_bytes=0)],
        models_root="/opt/models",
        disk_free_bytes=500 * 1024**3,
    )
    request = DeployRequest(
        model=folder.name, force_quantize=quantization == "bnb-4bit", context_tokens=context_tokens
    )
    result = plan(manifest, snapshot, request, Policy())
    return {
        "quantization": result.quantization,
        "need_bytes": result.gpu.need_bytes,
        "breakdown": result.gpu.breakdown,
        "context_tokens": result.context_tokens,
    }
