"""One list of quantization kinds: the package's, the runtime's copy, the install document's.

The runtime ships to the instance without `asoba_deploy`, so it repeats the Literal; a kind
the planner can choose but the document or the runtime refuses would fail a deploy at Install,
after the sync and after Flux was stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml

from asoba_deploy.core.manifest import QuantKind
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.quantization import DESCRIPTIONS, KINDS, PREQUANTIZED_KINDS
from instance_runtime.settings import Quantization as RuntimeQuantization
from instance_runtime.settings import RuntimeSettings

INSTALL = Path(__file__).resolve().parents[2] / "ssm_documents" / "install.yaml"


def enum_of(model: Any, field: str) -> list[str]:
    """The values a pydantic model's field accepts, as its JSON schema lists them."""
    schema = model.model_json_schema()
    return list(schema["properties"][field]["enum"])


def test_the_package_defines_every_kind_once_with_a_description() -> None:
    assert KINDS == ("none", "bnb-4bit", "bnb-8bit", "awq", "gptq")
    assert len(set(KINDS)) == len(KINDS)
    assert list(DESCRIPTIONS) == list(KINDS)
    assert all(text.strip() for text in DESCRIPTIONS.values())
    assert set(PREQUANTIZED_KINDS) == set(KINDS) - {"none"}


def test_the_runtime_settings_literal_equals_the_package_kinds() -> None:
    assert get_args(RuntimeQuantization) == KINDS
    assert enum_of(RuntimeSettings, "quantization") == list(KINDS)


def test_the_install_document_allows_exactly_the_package_kinds() -> None:
    document = yaml.safe_load(INSTALL.read_text())
    spec = document["parameters"]["Quantization"]
    assert spec["allowedValues"] == list(KINDS)
    assert spec["default"] == "none"
    assert all(kind in spec["description"] for kind in KINDS)


def test_plans_and_manifests_name_the_package_kinds() -> None:
    assert enum_of(Plan, "quantization") == list(KINDS)
    # The manifest's pre-quantized kinds (what a checkpoint's quantization_config maps to).
    assert set(get_args(QuantKind)) == set(PREQUANTIZED_KINDS)
