"""LOAD_FROM=stream: where the weights come from, and the small files a streamed load needs.

With LOAD_FROM=stream the engine reads the safetensors straight from S3 into memory with the
Run:ai model streamer (transformers: ``engine.py``; vLLM: its ``runai_streamer`` load format)
while the sync's disk copy finishes beside it. Once that copy is complete (the sync writes
``<MODEL_PATH>/.asoba-synced`` last) every later start loads from disk instead.

The streamed engine still needs config.json, the tokenizer and the generation config as local
files: ``stage`` fetches every object of the model folder that is not a weight file into a small
temporary folder, and lists the safetensors the streamer reads. S3 is reached through the AWS
default chain (on EC2 the instance role from IMDS; ``AWS_ENDPOINT_URL`` where one is set): the
same principal as the sync, so what the instance policy refuses fails the load here, with S3's
own words, before the streamer's C++ reader would only say "File access error".

Pure Python (no torch): the runtime decides the source before the engine is imported.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from instance_runtime.errors import ConfigurationError
from instance_runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

# Written last by the sync document (Part D of issue 13): the disk copy is whole.
SYNC_MARKER = ".asoba-synced"
# Never fetched for a streamed load: the weights (streamed) and the formats the runtime ignores.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
# A small file above this is not a config or tokenizer file: refuse rather than fill the disk.
_SMALL_FILE_LIMIT = 256 << 20
_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/?(.*)$")

LoadFrom = Literal["disk", "stream"]


class SourceRefused(ConfigurationError):
    """S3 refused a request of the streamed load (the instance policy, a missing bucket or key)."""


@dataclass(frozen=True)
class LoadSource:
    """Where this start loads the weights from, and why."""

    kind: LoadFrom
    reason: str
    location: str  # the model folder (disk) or its S3 folder (stream)


def choose_source(settings: RuntimeSettings) -> LoadSource:
    """disk unless LOAD_FROM=stream and the sync has not finished the disk copy yet."""
    folder = str(settings.model_path)
    if settings.load_from == "disk":
        return LoadSource("disk", "LOAD_FROM=disk", folder)
    marker = settings.model_path / SYNC_MARKER
    if marker.is_file():
        return LoadSource(
            "disk", f"LOAD_FROM=stream, but the disk copy is complete ({marker} is there)", folder
        )
    assert settings.model_source_uri is not None  # RuntimeSettings requires it with stream
    return LoadSource(
        "stream",
        f"LOAD_FROM=stream and the disk copy is not complete yet (no {marker})",
        settings.model_source_uri,
    )


@dataclass
class StagedModel:
    """A streamed model's small files in a local folder, and the safetensors to stream."""

    uri: str  # s3://bucket/prefix/model/
    folder: Path  # config.json, tokenizer files, generation_config.json...
    shards: list[str]  # s3:// URIs of the safetensors, sorted
    shard_bytes: int
    small_files: list[str] = field(default_factory=list)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b/ -> ("bucket", "a/b/") (the prefix ends in / unless empty)."""
    match = _URI.match(uri)
    if match is None:
        raise ConfigurationError(f"MODEL_SOURCE_URI {uri!r} is not s3://bucket/prefix/")
    bucket, prefix = match.group(1), match.group(2)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def prepare_streamer_environment(region: str | None) -> None:
    """Settings the streamer's C++ S3 client reads from the environment.

    A custom endpoint (AWS_ENDPOINT_URL: a local S3 server, MinIO) is addressed path-style; on
    AWS the default virtual-hosted style stays. The region is AWS_REGION (the unit's env file).
    """
    if os.environ.get("AWS_ENDPOINT_URL"):
        os.environ.setdefault("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if not os.environ.get(name):
            os.environ.pop(name, None)  # "AWS_REGION=" in the env file: no region, not an empty one
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        os.environ.setdefault("AWS_REGION", region)
        os.environ.setdefault("AWS_DEFAULT_REGION", region)


def _s3_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigurationError(
            "LOAD_FROM=stream needs boto3 (runai-model-streamer-s3 brings it); not installed here"
        ) from exc
    style = "path" if os.environ.get("AWS_ENDPOINT_URL") else "auto"
    return boto3.client("s3", config=Config(s3={"addressing_style": style}, retries={"max_attempts": 3}))


def _refused(action: str, uri: str, exc: Exception) -> ConfigurationError:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = error.get("Message") or ""
        return SourceRefused(
            f"LOAD_FROM=stream: S3 refused {action} of {uri}: {code}{': ' + message if message else ''}"
        )
    if isinstance(exc, NoCredentialsError):
        return ConfigurationError(
            f"LOAD_FROM=stream: no AWS credentials for {action} of {uri} (on EC2 the instance profile's)"
        )
    return ConfigurationError(f"LOAD_FROM=stream: {action} of {uri} failed: {type(exc).__name__}: {exc}")


def stage(uri: str, region: str | None = None) -> StagedModel:
    """List the model folder, fetch its small files, check that every shard can be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    prepare_streamer_environment(region)
    bucket, prefix = split_uri(uri)
    s3 = _s3_client()
    objects: dict[str, int] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(prefix) :]
                if name and "/" not in name:
                    objects[name] = int(item["Size"])
    except (ClientError, BotoCoreError) as exc:
        raise _refused("ListObjectsV2", uri, exc) from exc
    shards = sorted(name for name in objects if name.endswith(".safetensors"))
    if "adapter_config.json" in objects:
        raise ConfigurationError(f"LOAD_FROM=stream does not load LoRA adapters ({uri}); use LOAD_FROM=disk")
    if not shards:
        raise ConfigurationError(
            f"LOAD_FROM=stream: {uri} holds no *.safetensors (found {len(objects)} objects)"
        )
    if "config.json" not in objects:
        raise ConfigurationError(f"LOAD_FROM=stream: {uri} holds no config.json")
    small = sorted(n for n in objects if not n.endswith(_WEIGHT_SUFFIXES) and not n.startswith("."))
    too_big = [n for n in small if objects[n] > _SMALL_FILE_LIMIT]
    if too_big:
        raise ConfigurationError(f"LOAD_FROM=stream: {uri}{too_big[0]} is not a config or tokenizer file")
    folder = Path(tempfile.mkdtemp(prefix="asoba-stream-"))
    try:
        for name in small:
            try:
                s3.download_file(bucket, prefix + name, str(folder / name))
            except (ClientError, BotoCoreError) as exc:
                raise _refused("GetObject", f"s3://{bucket}/{prefix}{name}", exc) from exc
        # The streamer's reader reports a refusal only as "File access error": ask S3 first, with
        # a GET of each shard's 8-byte header length (a HEAD's refusal has no words in it).
        for name in shards:
            try:
                s3.get_object(Bucket=bucket, Key=prefix + name, Range="bytes=0-7")["Body"].read()
            except (ClientError, BotoCoreError) as exc:
                raise _refused("GetObject", f"s3://{bucket}/{prefix}{name}", exc) from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    staged = StagedModel(
        uri=f"s3://{bucket}/{prefix}",
        folder=folder,
        shards=[f"s3://{bucket}/{prefix}{name}" for name in shards],
        shard_bytes=sum(objects[name] for name in shards),
        small_files=small,
    )
    log.info(
        "streaming %s: %d safetensors file(s), %.1f MiB; %d small file(s) fetched to %s",
        staged.uri,
        len(shards),
        staged.shard_bytes / (1 << 20),
        len(small),
        folder,
    )
    return staged


def streamer_failure(uri: str, exc: BaseException) -> ConfigurationError:
    """The streamer's own error, said with what was being read."""
    return ConfigurationError(
        f"LOAD_FROM=stream: the Run:ai model streamer failed reading {uri}: {type(exc).__name__}: {exc} "
        "(RUNAI_STREAMER_LOG_LEVEL=DEBUG logs its S3 requests)"
    )
