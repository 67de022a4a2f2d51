"""pytest fixtures for sandbox tests: a moto server in this process, clients, sandboxes.

Use them from a conftest.py with ``from tests.fixtures import *  # noqa: F403``.

* ``moto_server`` (session): a ``ThreadedMotoServer`` on a free port; its URL.
* ``aws`` (function): boto3 clients (s3, ssm, ec2) on that server, the project's documents
  registered, an S3 bucket of its own.
* ``instance_tools`` (session): the stack's s5cmd uploaded once; its object URL.
* ``make_sandbox`` (function): ``make_sandbox(gpu=False)`` -> a ``Sandbox`` on a fresh moto EC2
  instance (documents sent to it get that S5cmdUri), closed (every process killed) at the end.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from local.sandbox.bundles import upload_instance_tools
from local.sandbox.documents import register_documents
from local.sandbox.sandbox import Sandbox, free_port

REGION = "us-west-2"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}


@dataclass
class Aws:
    endpoint_url: str
    s3: Any
    ssm: Any
    ec2: Any
    bucket: str


def launch_instance(ec2: Any, instance_type: str = "g5.4xlarge") -> str:
    """A running EC2 instance in moto, as the orchestrator's "instance exists" check expects."""
    reservation = ec2.run_instances(
        ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType=instance_type
    )
    return str(reservation["Instances"][0]["InstanceId"])


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", REGION),
    ):
        monkeypatch.setenv(key, value)
    clients = {
        name: boto3.client(name, endpoint_url=moto_server, **CREDENTIALS) for name in ("s3", "ssm", "ec2")
    }
    register_documents(clients["ssm"])
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    clients["s3"].create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return Aws(endpoint_url=moto_server, bucket=bucket, **clients)


@pytest.fixture(scope="session")
def instance_tools(moto_server: str) -> str:
    """The stack's s5cmd in a bucket of its own, once: its object URL (the documents' S5cmdUri)."""
    s3 = boto3.client("s3", endpoint_url=moto_server, **CREDENTIALS)
    bucket = f"tools-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return upload_instance_tools(s3, bucket)


@pytest.fixture
def make_sandbox(aws: Aws, tmp_path: Path, instance_tools: str) -> Iterator[Callable[..., Sandbox]]:
    made: list[Sandbox] = []

    def make(gpu: bool = False, name: str = "instance", aws_cli: bool = False) -> Sandbox:
        sandbox = Sandbox(
            tmp_path / name, launch_instance(aws.ec2), gpu=gpu, endpoint_url=aws.endpoint_url, aws_cli=aws_cli
        )
        sandbox.s5cmd_uri = instance_tools
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.close()
