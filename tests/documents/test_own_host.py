"""Sandboxes on hosts of their own (local/sandbox/own_host.py), for fleets on one machine: each
has its own network and sees the stack's root folder as its own root; and a download whose
destination cannot be written fails its step, as the agent's plugin does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from local.sandbox import Sandbox, run_document
from local.sandbox.own_host import OwnHost, available
from tests.documents.test_agent import _download_document
from tests.fixtures import Aws

pytestmark = pytest.mark.skipif(not available(), reason="needs network and mount namespaces (root)")


@pytest.fixture
def two_hosts(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> Iterator[tuple[Sandbox, Sandbox, Path]]:
    view = tmp_path / "the-stacks-root"
    first, second = make_sandbox(name="first"), make_sandbox(name="second")
    port = int(aws.endpoint_url.rsplit(":", 1)[1])
    hosts = [OwnHost(box.root, view, port) for box in (first, second)]
    first.own_host, second.own_host = hosts
    yield first, second, view
    for host in hosts:
        host.close()


def test_each_host_has_its_own_network_and_folders(two_hosts: tuple[Sandbox, Sandbox, Path]) -> None:
    first, second, view = two_hosts
    assert first.own_host is not None and second.own_host is not None
    pid_file = first.root / "server.pid"
    server = f"{sys.executable} -m http.server 18123 --bind 127.0.0.1"
    script = f"echo mine > {view}/marker; {server} >/dev/null 2>&1 & echo $! > {pid_file}"
    # When the first host writes under the stack's root and listens on a port
    subprocess.run(first.on_host(["sh", "-c", script]), check=True, timeout=30)
    try:
        first.own_host.wait_for_port(18123)
        # Then the file is in its own root, not in the other's, nor in the shared path itself
        assert (first.root / "marker").read_text() == "mine\n"
        assert not (second.root / "marker").exists() and not (view / "marker").exists()
        # and the port is open on its network only
        assert not second.own_host.port_open(18123)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", 18123)) != 0
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_cloud_is_reachable_from_the_hosts_network(
    aws: Aws, two_hosts: tuple[Sandbox, Sandbox, Path]
) -> None:
    first, _, _ = two_hosts
    port = int(aws.endpoint_url.rsplit(":", 1)[1])
    assert first.own_host is not None and first.own_host.port_open(port)
    # an S3 request through the forwarder: moto answers the bucket listing
    answer = first.own_host.get(f"http://127.0.0.1:{port}/")
    assert "ListAllMyBucketsResult" in answer and aws.bucket in answer


def test_a_download_whose_destination_cannot_be_written_fails_its_step(
    aws: Aws, make_sandbox: Callable[..., Sandbox], instance_tools: str
) -> None:
    sandbox = make_sandbox()
    blocked = sandbox.runtime_root / "downloads-here"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file, not a folder\n")
    _download_document(aws, "sandbox-download-blocked", str(blocked / "s5cmd"), on_failure="exit")
    run = run_document(aws.ssm, sandbox, "sandbox-download-blocked", Url=instance_tools)
    # the plugin fails the step (not an agent that never answers); the next step does not run
    assert run.status == "Failed", run.explain()
    assert "failed to download content" in run.other_steps[0][2], run.explain()
    assert "ran" not in run.stdout
