"""The policy: the seed's defaults, overridable through environment variables."""

from __future__ import annotations

import pytest

from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.policy import ENV_VARS, GIB, Policy


def test_defaults_are_the_seeds() -> None:
    policy = Policy()
    assert policy.small_model_max_bytes == 3 * GIB
    assert policy.quantize_above_bytes == 20 * GIB
    assert (policy.coexist_port, policy.replace_port) == (8001, 8000)
    assert (policy.flux_unit, policy.runtime_unit) == ("flux-api.service", "asoba-inference.service")
    assert policy.models_root == "/opt/models"
    assert policy.runtime_memory_max_bytes == 32 * GIB
    assert Policy.from_env({}) == policy


def test_env_overrides() -> None:
    policy = Policy.from_env(
        {
            "SMALL_MODEL_MAX_GIB": "1.5",
            "QUANTIZE_ABOVE_GIB": "40",
            "COEXIST_PORT": "9001",
            "FLUX_UNIT": "flux.service",
            "MEMORY_MARGIN_FRACTION": "0.2",
            "PREFER_AWQ_VARIANT": "false",
            "MODELS_ROOT": "/srv/models",
            "UNRELATED": "x",
        }
    )
    assert policy.small_model_max_bytes == 3 * GIB // 2
    assert policy.quantize_above_bytes == 40 * GIB
    assert policy.coexist_port == 9001
    assert policy.flux_unit == "flux.service"
    assert policy.memory_margin_fraction == 0.2
    assert policy.prefer_awq_variant is False
    assert policy.models_root == "/srv/models"
    assert len(ENV_VARS) == 17


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"QUANTIZE_ABOVE_GIB": "lots"}, "expected a number"),
        ({"COEXIST_PORT": "80"}, "coexist_port"),
        ({"MEMORY_MARGIN_FRACTION": "2"}, "memory_margin_fraction"),
        ({"DEFAULT_DTYPE": "float32"}, "default_dtype"),
    ],
)
def test_bad_env_is_invalid_input(env: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        Policy.from_env(env)
