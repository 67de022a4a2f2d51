"""Every instance step sends only parameters its document declares, and all it requires."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from asoba_deploy.core.settings import Settings
from asoba_deploy.core.steps import STEPS, health_budget

DOCUMENTS = Path(__file__).resolve().parents[2] / "ssm_documents"

CONFIG = Settings(
    instance_ids=["i-0123456789abcdef0"],
    model_bucket="asoba-llm-cache",
    runtime_bundle_uri="s3://cdk-hnb659fds-assets-123456789012-us-west-2/abc123.zip",
)
STATE: dict[str, Any] = {
    "instance_id": "i-0123456789abcdef0",
    "plan": {
        "deploy_model": "qwen3-14b-awq",
        "source_uri": "s3://asoba-llm-cache/qwen3-14b-awq/",
        "model_path": "/opt/models/qwen3-14b-awq",
        "port": 8000,
        "quantization": "awq",
        "dtype": "float16",
        "context_tokens": 4096,
        "stop_services": ["flux-api.service"],
        "total_bytes": 10 * 1024**3,
    },
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_parameters_match_the_document(step: str) -> None:
    spec = STEPS[step]
    declared = yaml.safe_load((DOCUMENTS / f"{spec.document}.yaml").read_text())["parameters"]
    sent = spec.parameters(CONFIG, STATE)
    assert set(sent) <= set(declared), f"{spec.document} does not declare {set(sent) - set(declared)}"
    required = {name for name, p in declared.items() if "default" not in p}
    assert required <= set(sent), f"{spec.document} requires {required - set(sent)}"
    for name, value in sent.items():
        rule = declared[name]
        if "allowedValues" in rule:
            assert value in rule["allowedValues"], (name, value)
        else:
            assert re.fullmatch(rule["allowedPattern"], value), (name, value)


def test_health_budget_grows_with_model_size() -> None:
    small = health_budget(CONFIG, {"plan": {"total_bytes": 1024**3}})
    large = health_budget(CONFIG, {"plan": {"total_bytes": 30 * 1024**3}})
    assert large - small == 29 * CONFIG.step_budgets.health_check_per_gb
