"""Put model folders into the emulated bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def upload_model(s3: Any, bucket: str, name: str, folder: Path, prefix: str = "") -> list[str]:
    """Upload every file of `folder` under s3://bucket/<prefix><name>/, hidden ones aside (a
    cache's markers); returns the keys."""
    keys = []
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            key = f"{prefix}{name}/{relative.as_posix()}"
            s3.upload_file(str(path), bucket, key)
            keys.append(key)
    return keys


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
