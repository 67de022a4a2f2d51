"""End-to-end fixtures: the deployed stack, the sandboxed instance, models in the bucket."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.sandbox.sandbox import port_open, wait_for_port
from tests.conftest import Ports

RUNTIME_UNIT = "asoba-inference.service"
ROUTER_UNIT = "asoba-router.service"
FLUX_UNIT = "flux-api.service"


@pytest.fixture(scope="session")
def sfn(local_cloud: Any) -> Any:
    return local_cloud.client("stepfunctions")


@pytest.fixture(scope="session")
def machine_arn(deployed_stack: Any) -> str:
    return str(deployed_stack.state_machine_arn)


@pytest.fixture(scope="session")
def tiny_in_bucket(local_cloud: Any, model_bucket: str, tiny_model: Path) -> str:
    from local.bucket import upload_model

    upload_model(local_cloud.client("s3"), model_bucket, "tiny-llama", tiny_model)
    return "tiny-llama"


def remove_extra_units(sandbox: Any) -> None:
    """Every resident model's unit and the stable-endpoint router stopped, their files gone."""
    for path in [*sandbox.unit_dir.glob("asoba-inference@*.service"), sandbox.unit_dir / ROUTER_UNIT]:
        if not path.exists():
            continue
        sandbox.systemctl("stop", path.name, check=False)
        sandbox.systemctl("disable", path.name, check=False)
        path.unlink(missing_ok=True)
    for folder in (sandbox.env_dir / "models", sandbox.state_dir / "models", sandbox.state_dir / "switch"):
        shutil.rmtree(folder, ignore_errors=True)
    for path in [
        *sandbox.profile_dir.glob("asoba-inference@*.sh"),
        sandbox.env_dir / "router.env",
        sandbox.env_dir / "router.json",
    ]:
        path.unlink(missing_ok=True)


def reset_instance(sandbox: Any, ports: Ports) -> None:
    """Back to the seed's starting point: Flux running on its port, no inference service (no
    resident model, no router)."""
    remove_extra_units(sandbox)
    if sandbox.unit_state(RUNTIME_UNIT).get("ActiveState") == "active":
        sandbox.systemctl("stop", RUNTIME_UNIT, check=False)
    for path in (sandbox.unit_dir / RUNTIME_UNIT, sandbox.env_dir / "env"):
        path.unlink(missing_ok=True)
    sandbox.systemctl("daemon-reload", check=False)
    sandbox.set_gpu_claim(FLUX_UNIT, 4096)
    sandbox.go_online()
    if not port_open(ports.flux):
        sandbox.systemctl("start", FLUX_UNIT)
        wait_for_port(ports.flux, timeout_s=15)
    deadline = time.monotonic() + 15
    while port_open(ports.coexist) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture
def instance(sandbox: Any, ports: Ports) -> Iterator[Any]:
    reset_instance(sandbox, ports)
    yield sandbox
    reset_instance(sandbox, ports)
