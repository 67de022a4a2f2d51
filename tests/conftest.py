"""Session fixtures of the emulation harness (see tests/README.md).

local_cloud      moto's server on 127.0.0.1, executing state machines, Lambdas in process
instance_id      an EC2 instance in moto (running)
model_bucket     the emulated model bucket
deployed_stack   the synthesized stack created in moto as `cdk deploy` would
tiny_model       a tiny random causal LM folder (safetensors + trained tokenizer)
upload_model     puts a model folder into the bucket
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_BUCKET = "asoba-llm-cache"

# The same pieces `make demo` brings up (tests/emulator/environment.py), one fixture each.
from local.environment import Ports  # noqa: E402 - after the environment defaults above


@pytest.fixture(scope="session")
def local_cloud() -> Iterator[Any]:
    from local.environment import start_cloud

    cloud = start_cloud()
    yield cloud
    cloud.stop()


@pytest.fixture(scope="session")
def instance_id(local_cloud: Any) -> str:
    from local.environment import launch_instance

    return launch_instance(local_cloud)


@pytest.fixture(scope="session")
def second_instance_id(local_cloud: Any) -> str:
    """A second instance of the stack (sandboxed only by the tests that use it: two instances'
    SSM events must never cross, tests/e2e/test_command_events.py)."""
    from local.environment import launch_instance

    return launch_instance(local_cloud)


@pytest.fixture(scope="session")
def third_instance_id(local_cloud: Any) -> str:
    """A third instance of the stack, for fleet rollouts (tests/e2e/test_fleet.py sandboxes it)."""
    from local.environment import launch_instance

    return launch_instance(local_cloud)


@pytest.fixture(scope="session")
def model_bucket(local_cloud: Any) -> str:
    from local.environment import model_bucket as ensure_model_bucket

    return ensure_model_bucket(local_cloud, MODEL_BUCKET)


@pytest.fixture(scope="session")
def ports() -> Ports:
    from local.cloud import free_port

    return Ports(flux=free_port(), coexist=free_port())


@pytest.fixture(scope="session")
def sandbox(
    local_cloud: Any, instance_id: str, ports: Ports, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The instance: an A10G-like sandbox with Flux running on its port."""
    from local.environment import start_sandbox

    box = start_sandbox(tmp_path_factory.mktemp("instance"), local_cloud, instance_id, ports.flux)
    yield box
    box.close()


@pytest.fixture(scope="session")
def stack_context(
    instance_id: str,
    second_instance_id: str,
    third_instance_id: str,
    model_bucket: str,
    sandbox: Any,
    ports: Ports,
) -> dict[str, Any]:
    from local.environment import stack_context as context_for

    # Budgets short enough for the timeout faults, long enough for a tiny model on 2 busy cores.
    return context_for(instance_id, model_bucket, sandbox, ports) | {
        "step_budgets": {"install": 90, "health_check": 120},
        "instance_ids": [instance_id, second_instance_id, third_instance_id],  # the first is the default
    }


@pytest.fixture(scope="session")
def deployed_stack(
    local_cloud: Any, stack_context: dict[str, Any], sandbox: Any, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    from local.environment import deploy_stack

    return deploy_stack(
        local_cloud, stack_context, tmp_path_factory.mktemp("cdk") / "cdk.out", sandbox=sandbox
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from local.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def upload_model(local_cloud: Any, model_bucket: str) -> Callable[[str, Path], list[str]]:
    from local.bucket import upload_model as _upload

    def _do(name: str, folder: Path) -> list[str]:
        return _upload(local_cloud.client("s3"), model_bucket, name, folder)

    return _do
