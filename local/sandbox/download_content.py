"""``aws:downloadContent`` with sourceType S3, as the real agent runs it.

From github.com/aws/amazon-ssm-agent agent/plugins/downloadcontent (downloadcontent.go,
s3resource/s3resource.go), agent/s3util/s3uri.go and agent/fileutil/artifact/artifact.go:

* ``sourceInfo`` is ``{"path": "<https S3 URL>"}`` (a map or its JSON text); the URL is parsed
  by host (``s3.<region>.amazonaws.com/<bucket>/<key>`` path style, or
  ``<bucket>.s3.<region>.amazonaws.com/<key>``); anything else is "invalid S3 path parameter";
* an absolute ``destinationPath`` is used as is, a relative one lies under
  ``<orchestration>/<command-id>/downloads/``;
* the agent first lists ``<key>/`` (ListObjects, so s3:ListBucket): objects under it are a folder
  download; a failed listing of a key that does not end in ``/`` falls back to downloading the
  key as one file (so GetObject alone is enough for a file);
* a single file lands at ``destinationPath`` itself unless that is an existing folder or ends in
  ``/`` (then it keeps its own name inside); every file is made 0700;
* the calls are the instance's own (its role, evaluated by local/iam.py when the local cloud
  enforces IAM); a denial or a missing key fails the step with the service's message.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from local.sandbox.sandbox import Sandbox

DOWNLOADS_DIR = "downloads"
# s3uri.go nonVpceUrlPattern: maybe a bucket, s3[.-], optional region, the partition's suffix
_HOST = re.compile(
    r"^((?P<bucket>.+)\.)?s3[.-](website[-.])?(accelerate\.)?(dualstack[-.])?"
    r"((?P<region>[-a-z0-9]+)\.)?"
    r"(amazonaws\.com|amazonaws\.com\.cn|c2s\.ic\.gov|sc2s\.sgov\.gov|cloud\.adc-e\.uk|csp\.hci\.ic\.gov)$"
)


class DownloadFailed(Exception):
    """The step fails with this message on its stderr, as the agent's MarkAsFailed."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str
    region: str


def parse_s3_url(url: str) -> S3Location | None:
    """s3uri.go ParseAmazonS3URL; None where the agent says the URL is not an S3 URL."""
    match = re.match(r"^https?://([^/]+)(/.*)?$", url.strip())
    if match is None:
        return None
    host, path = match.group(1).split(":")[0], match.group(2) or ""
    found = _HOST.match(host)
    if found is None:
        return None
    bucket = found.group("bucket") or ""
    region = found.group("region") or ""
    if region in ("", "external-1"):
        region = "us-east-1"
    if bucket:  # virtual-hosted style: the whole path is the key
        return S3Location(bucket, path[1:] if path not in ("", "/") else "", region)
    path = path[1:]
    if not path:
        return S3Location("", "", region)
    bucket, _, key = path.partition("/")
    return S3Location(bucket, key, region)


def _source_path(inputs: dict[str, Any]) -> str:
    if not inputs.get("sourceType"):
        raise DownloadFailed("invalid input: SourceType must be specified")
    if inputs["sourceType"] != "S3":
        raise DownloadFailed(f"the sandbox agent downloads sourceType S3 only, not {inputs['sourceType']}")
    info = inputs.get("sourceInfo")
    if not info:
        raise DownloadFailed("invalid input: SourceInfo must be specified")
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as error:
            raise DownloadFailed(
                "s3 url parsing failed. Source Info could not be unmarshalled for source type S3. "
                f"Please check JSON format of SourceInfo - {error}"
            ) from error
    path = str(info.get("path", "")).strip() if isinstance(info, dict) else ""
    if not path:
        raise DownloadFailed("S3 source path in SourceInfo must be specified")
    return path


def destination(sandbox: Sandbox, command_id: str, destination_path: str) -> Path:
    if os.path.isabs(destination_path):
        # on a host of its own, the stack's root folder is the sandbox's root (own_host.py)
        own = sandbox.own_host
        return own.local_path(Path(destination_path)) if own is not None else Path(destination_path)
    return sandbox.orchestration_dir / command_id / DOWNLOADS_DIR / destination_path


def _client(sandbox: Sandbox, region: str) -> Any:
    return boto3.client(
        "s3",
        region_name=region,
        endpoint_url=sandbox.endpoint_url,
        aws_access_key_id=sandbox.access_key_id,
        aws_secret_access_key="testing",  # moto accepts any secret
    )


def download(sandbox: Sandbox, command_id: str, region: str, inputs: dict[str, Any]) -> str:
    """Run the plugin; its stdout on success, DownloadFailed otherwise."""
    url = _source_path(inputs)
    location = parse_s3_url(url.replace("+", "%20"))
    if location is None or not location.bucket:
        raise DownloadFailed("invalid S3 path parameter")
    dest = destination(sandbox, command_id, str(inputs.get("destinationPath") or ""))
    s3 = _client(sandbox, region)
    keys: list[str] = []
    prefix = location.key if not location.key or location.key.endswith("/") else f"{location.key}/"
    try:
        pages = s3.get_paginator("list_objects").paginate(Bucket=location.bucket, Prefix=prefix)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    except (ClientError, BotoCoreError) as error:
        if location.key.endswith("/") or not location.key:
            raise DownloadFailed(str(error)) from error
    folder = bool(keys)
    if not folder:
        keys = [location.key]
    written: list[Path] = []
    for key in keys:
        if key.endswith("/"):
            continue  # a folder marker: only files are downloaded
        if folder:
            target = dest / key[len(location.key) :].lstrip("/")
        elif dest.is_dir() or str(inputs.get("destinationPath") or "").endswith("/"):
            target = dest / Path(key).name
        else:
            target = dest
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            body = s3.get_object(Bucket=location.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as error:
            raise DownloadFailed(str(error)) from error
        target.write_bytes(body)
        target.chmod(0o700)  # appconfig.ReadWriteExecuteAccess
        written.append(target)
    return f"Content downloaded to {dest}\n"
