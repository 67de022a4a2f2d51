"""The Plan handler: event in, `Plan.model_dump(mode="json")` out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from asoba_deploy.core.config import DeployConfig, InstanceRoots, Thresholds
from asoba_deploy.core.errors import InvalidInput, ModelNotFound
from asoba_deploy.core.settings import Settings
from lambdas.handlers import plan as plan_handler
from tests.unit.conftest import SeedBucket
from tests.unit.planner_support import seed_snapshot

DEPLOY = DeployConfig(
    instance_ids=["i-0123456789abcdef0"], model_bucket="asoba-llm-cache", model_prefix="seed/"
)
CONFIG = Settings(deploy=DEPLOY)


def event(model: str, **request: Any) -> dict[str, Any]:
    return {
        "request": {"model": model, "dry_run": True, **request},
        "snapshot": seed_snapshot().model_dump(mode="json"),
        "instance_id": "i-0123456789abcdef0",
        "execution_name": "exec-1",
        "steps": {},
    }


@dataclass
class FakeContext:
    function_name: str = "plan"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-west-2:123456789012:function:plan"
    aws_request_id: str = "req-1"


def test_plan_event_returns_the_plan_as_json(seed_bucket: SeedBucket) -> None:
    result = plan_handler.plan_event(event("qwen3-14b"), seed_bucket.client, CONFIG)
    assert json.loads(json.dumps(result)) == result
    assert result["model"] == "qwen3-14b"
    assert result["deploy_model"] == "qwen3-14b-awq"
    assert (result["action"], result["port"], result["quantization"]) == ("replace", 8000, "awq")
    assert result["stop_services"] == ["flux-api.service"]
    assert result["fits"] is True
    assert result["source_uri"] == "s3://asoba-llm-cache/seed/qwen3-14b-awq/"
    for key in (
        "files",
        "bytes_to_transfer",
        "gpu",
        "ram",
        "disk",
        "reasons",
        "warnings",
        "endpoints",
        "unit",
        "model_path",
        "context_tokens",
        "dtype",
    ):
        assert key in result


def test_policy_comes_from_the_configuration(seed_bucket: SeedBucket) -> None:
    deploy = DEPLOY.model_copy(
        update={
            "thresholds": Thresholds(replace_port=9000),
            "instance_roots": InstanceRoots(models_root="/srv/models"),
        }
    )
    result = plan_handler.plan_event(event("deepseek-r1-8b"), seed_bucket.client, Settings(deploy=deploy))
    assert result["port"] == 9000
    assert result["model_path"] == "/srv/models/deepseek-r1-8b"


def test_not_fitting_is_a_result_not_an_error(seed_bucket: SeedBucket) -> None:
    result = plan_handler.plan_event(event("llama-3-70b"), seed_bucket.client, CONFIG)
    assert result["fits"] is False and result["shortfalls"]


def test_handler_uses_the_shared_s3_client(seed_bucket: SeedBucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_handler.aws, "client", lambda service: seed_bucket.client)
    for name, value in CONFIG.to_environment().items():
        monkeypatch.setenv(name, value)
    result = plan_handler.handler(event("mistral_iac_generation"), FakeContext())  # type: ignore[arg-type]
    assert (result["action"], result["port"]) == ("coexist", 8001)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda e: e.pop("snapshot"), InvalidInput, "snapshot"),
        (lambda e: e["snapshot"].pop("hostname"), InvalidInput, "hostname"),
        (lambda e: e["request"].update(model="../x"), InvalidInput, "model"),
        (lambda e: e["request"].update(model=None, mode="validate"), InvalidInput, "request.model"),
        (lambda e: e["request"].update(model="no-such-model"), ModelNotFound, "no-such-model"),
    ],
)
def test_bad_events(seed_bucket: SeedBucket, mutate: Any, error: type[Exception], match: str) -> None:
    bad = event("deepseek-r1-8b")
    mutate(bad)
    with pytest.raises(error, match=match):
        plan_handler.plan_event(bad, seed_bucket.client, CONFIG)


def test_missing_settings_are_refused_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASOBA_DEPLOY", raising=False)
    monkeypatch.delenv("ASOBA_STACK", raising=False)
    monkeypatch.setattr(plan_handler.aws, "client", lambda service: pytest.fail("no AWS call expected"))
    with pytest.raises(ValidationError, match="deploy"):
        plan_handler.handler(event("deepseek-r1-8b"), FakeContext())  # type: ignore[arg-type]
