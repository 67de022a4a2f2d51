"""The policy: the seed's defaults, from the one configuration model."""

from __future__ import annotations

from asoba_deploy.core.config import DeployConfig, InstanceRoots, Thresholds
from asoba_deploy.core.policy import GIB, Policy

DEPLOY = DeployConfig(instance_ids=["i-0123456789abcdef0"], model_bucket="asoba-llm-cache")


def test_defaults_are_the_seeds() -> None:
    policy = Policy()
    assert policy.small_model_max_bytes == 3 * GIB
    assert policy.quantize_above_bytes == 20 * GIB
    assert (policy.coexist_port, policy.replace_port) == (8001, 8000)
    assert (policy.flux_unit, policy.runtime_unit) == ("flux-api.service", "asoba-inference.service")
    assert policy.models_root == "/opt/models"
    assert policy.runtime_memory_max_bytes == 32 * GIB


def test_a_default_context_gives_the_default_policy() -> None:
    assert Policy.from_config(DEPLOY) == Policy()


def test_the_context_sets_thresholds_ports_flux_and_models_root() -> None:
    deploy = DEPLOY.model_copy(
        update={
            "thresholds": Thresholds(small_model_gb=1.5, quantize_above_gpu_gb=40, coexist_port=9001),
            "flux_service": "flux.service",
            "instance_roots": InstanceRoots(models_root="/srv/models"),
        }
    )
    policy = Policy.from_config(deploy)
    assert policy.small_model_max_bytes == 3 * GIB // 2
    assert policy.quantize_above_bytes == 40 * GIB
    assert (policy.coexist_port, policy.replace_port) == (9001, 8000)
    assert policy.flux_unit == "flux.service"
    assert policy.models_root == "/srv/models"
