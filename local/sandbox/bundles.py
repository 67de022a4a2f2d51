"""Runtime bundles as the stack ships them: instance_runtime/ zipped with its files at the root.

CDK's S3 asset of a folder is a zip of the folder's content; install unpacks it into
RuntimeRoot/instance_runtime. ``fake_runtime_bundle`` packs the stand-in of
tests/sandbox/fake_runtime with the real systemd templates, for tests of the documents that
should not wait for a model to load.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RUNTIME_DIR = REPO / "instance_runtime"
FAKE_RUNTIME_DIR = Path(__file__).resolve().parent / "fake_runtime"
SKIPPED = ("__pycache__", ".pyc", ".mypy_cache", ".pytest_cache")


def _files(folder: Path) -> dict[str, bytes]:
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part in rel for part in SKIPPED):
            found[rel] = path.read_bytes()
    return found


def write_zip(files: dict[str, bytes], dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(files.items()):
            archive.writestr(name, data)
    return dest


def runtime_bundle(dest: Path) -> Path:
    """The real instance_runtime/ folder, zipped as the stack's asset."""
    return write_zip(_files(RUNTIME_DIR), dest)


def fake_runtime_bundle(
    dest: Path,
    *,
    requirements: str | None = None,
    version: str | None = None,
    vllm_requirements: str | None = None,
) -> Path:
    """The fake runtime plus the real systemd templates; ``requirements``/``version`` override its own.

    Like the real bundle it has one requirement set per engine: requirements.txt (transformers)
    and requirements-vllm.txt (vllm; ``vllm_requirements``, else the same as requirements.txt).
    """
    files = _files(FAKE_RUNTIME_DIR)
    for name, data in _files(RUNTIME_DIR / "systemd").items():
        files[f"systemd/{name}"] = data
    if requirements is not None:
        files["requirements.txt"] = requirements.encode()
    files["requirements-vllm.txt"] = (
        vllm_requirements.encode() if vllm_requirements is not None else files["requirements.txt"]
    )
    if version is not None:
        init = files["__init__.py"].decode()
        files["__init__.py"] = init.replace(
            '__version__ = "0.0.0+sandbox"', f'__version__ = "{version}"'
        ).encode()
    return write_zip(files, dest)


def object_url(s3: Any, bucket: str, key: str) -> str:
    """The https URL of an object, as CDK's Asset.http_url gives it and aws:downloadContent reads it."""
    return f"https://s3.{s3.meta.region_name}.amazonaws.com/{bucket}/{key}"


def upload(s3: Any, bucket: str, path: Path, key: str) -> str:
    """Put ``path`` at ``key``; its object URL (what the install document's bundle parameter takes)."""
    s3.upload_file(str(path), bucket, key)
    return object_url(s3, bucket, key)


def upload_instance_tools(s3: Any, bucket: str) -> str:
    """The stack's s5cmd into ``bucket``; its object URL (the documents' S5cmdUri)."""
    from stacks.instance_tools import s5cmd_binary

    return upload(s3, bucket, s5cmd_binary(), "tools/s5cmd")
