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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_BUCKET = "asoba-llm-cache"


@pytest.fixture(scope="session")
def local_cloud() -> Iterator[Any]:
    from tests.emulator.cloud import LocalCloud

    cloud = LocalCloud().start()
    yield cloud
    cloud.stop()


@pytest.fixture(scope="session")
def instance_id(local_cloud: Any) -> str:
    ec2 = local_cloud.client("ec2")
    reservation = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="g5.4xlarge")
    return str(reservation["Instances"][0]["InstanceId"])


@pytest.fixture(scope="session")
def model_bucket(local_cloud: Any) -> str:
    from tests.emulator.models import ensure_bucket

    ensure_bucket(local_cloud.client("s3"), MODEL_BUCKET, local_cloud.region)
    return MODEL_BUCKET


@dataclass
class Ports:
    flux: int  # the seed's 8000: Flux, and what a replacing runtime takes over
    coexist: int  # the seed's 8001: a runtime beside Flux


@pytest.fixture(scope="session")
def ports() -> Ports:
    from tests.emulator.cloud import free_port

    return Ports(flux=free_port(), coexist=free_port())


@pytest.fixture(scope="session")
def sandbox(
    local_cloud: Any, instance_id: str, ports: Ports, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The instance: an A10G-like sandbox with Flux running on its port."""
    from tests.sandbox.sandbox import Sandbox

    box = Sandbox(
        tmp_path_factory.mktemp("instance"), instance_id, gpu=True, endpoint_url=local_cloud.endpoint
    )
    box.install_fake_flux(ports.flux)
    yield box
    box.close()


@pytest.fixture(scope="session")
def stack_context(instance_id: str, model_bucket: str, sandbox: Any, ports: Ports) -> dict[str, Any]:
    return {
        "instance_ids": [instance_id],
        "model_bucket": model_bucket,
        "poll_interval_seconds": 1,
        # short enough for the timeout tests, long enough for a tiny model on 2 busy cores
        "step_budgets": {"install": 90, "health_base": 120},
        "thresholds": {"coexist_port": ports.coexist, "replace_port": ports.flux},
        "instance_roots": {
            "models_root": str(sandbox.models_root),
            "runtime_root": str(sandbox.runtime_root),
            "unit_dir": str(sandbox.unit_dir),
            "env_dir": str(sandbox.env_dir),
            "profile_dir": str(sandbox.profile_dir),
            "state_dir": str(sandbox.state_dir),
        },
        "base_python": sandbox.base_python,
        "service_user": sandbox.service_user,
    }


@pytest.fixture(scope="session")
def deployed_stack(
    local_cloud: Any, stack_context: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    from tests.emulator.stack import deploy, synthesize

    synth = synthesize(tmp_path_factory.mktemp("cdk") / "cdk.out", stack_context)
    return deploy(synth, local_cloud, local_cloud.region)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def upload_model(local_cloud: Any, model_bucket: str) -> Callable[[str, Path], list[str]]:
    from tests.emulator.models import upload_model as _upload

    def _do(name: str, folder: Path) -> list[str]:
        return _upload(local_cloud.client("s3"), model_bucket, name, folder)

    return _do
