"""The catalog: the seed's six models, overridden and extended by a file in the bucket."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from asoba_deploy.core.catalog import builtin_catalog, load_catalog
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.manifest import read_manifest
from asoba_deploy.core.planner import plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import BotoS3Reader
from local.sparse_models import decoder_tensors, upload_folder, write_model
from tests.unit.planner_support import seed_snapshot
from tests.unit.test_manifest import TINY


def test_builtin_catalog_is_the_seed_table() -> None:
    catalog = builtin_catalog()
    assert catalog.names() == sorted(
        [
            "mistral_policy_analysis",
            "mistral_iac_generation",
            "qwen3-14b",
            "qwen3-14b-awq",
            "qwen3-coder-30b",
            "deepseek-r1-8b",
        ]
    )
    tiers = {name: catalog.entries[name].tier for name in catalog.names()}
    assert [n for n, t in tiers.items() if t == 1] == [
        "mistral_iac_generation",
        "mistral_policy_analysis",
        "qwen3-14b",
    ]
    qwen = catalog.get("qwen3-14b")
    variant = catalog.get("qwen3-14b-awq")
    assert qwen is not None and qwen.awq_variant == "qwen3-14b-awq"
    assert variant is not None and variant.variant_of == "qwen3-14b"
    assert catalog.get("unknown") is None


def test_catalog_file_overrides_and_extends(moto_s3: Any) -> None:
    document = {
        "models": {
            "qwen3-14b": {"awq_variant": "qwen3-14b-awq-v2"},
            "my-model": {"tier": 2, "description": "ours"},
        }
    }
    moto_s3.put_object(Bucket="models", Key="root/catalog.json", Body=json.dumps(document).encode())
    catalog = load_catalog(BotoS3Reader(moto_s3, "models"), "root/catalog.json")
    qwen = catalog.get("qwen3-14b")
    assert qwen is not None
    assert (qwen.awq_variant, qwen.tier) == ("qwen3-14b-awq-v2", 1)  # override keeps the other fields
    mine = catalog.get("my-model")
    assert mine is not None and (mine.tier, mine.description) == (2, "ours")
    assert len(catalog.entries) == 7
    assert catalog.source == "builtin+s3://models/root/catalog.json"


def test_absent_catalog_file_means_builtin(moto_s3: Any) -> None:
    assert load_catalog(BotoS3Reader(moto_s3, "models"), "catalog.json") == builtin_catalog()


class _RefusingS3:
    """A boto3 S3 client stub whose GetObject answers as S3 does to a principal it refuses."""

    def __init__(self, code: str, status: int) -> None:
        self.code, self.status = code, status

    def get_object(self, **kwargs: Any) -> Any:
        raise ClientError(
            {
                "Error": {"Code": self.code, "Message": "Access Denied"},
                "ResponseMetadata": {"HTTPStatusCode": self.status},
            },
            "GetObject",
        )


def test_access_denied_on_the_catalog_key_means_builtin_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # On AWS a missing key answers 403 to a principal whose s3:ListBucket does not cover it
    reader = BotoS3Reader(_RefusingS3("AccessDenied", 403), "models")
    with caplog.at_level(logging.WARNING, logger="asoba_deploy.core.catalog"):
        assert load_catalog(reader, "root/catalog.json") == builtin_catalog()
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "s3://models/root/catalog.json" in warning
    assert "AccessDenied" in warning and "403" in warning


@pytest.mark.parametrize(
    ("code", "status"), [("InternalError", 500), ("SlowDown", 503), ("NoSuchBucket", 404)]
)
def test_other_catalog_read_errors_stay_errors(code: str, status: int) -> None:
    with pytest.raises(ClientError, match=code):
        load_catalog(BotoS3Reader(_RefusingS3(code, status), "models"), "catalog.json")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"models": {"x": {"color": "red"}}}).encode(), "color"),
        (json.dumps({"models": {"../x": {}}}).encode(), "one name"),
        (json.dumps({"models": {"x": {"tier": 3}}}).encode(), "tier"),
        (json.dumps({"entries": []}).encode(), "entries"),
    ],
)
def test_invalid_catalog_file_is_invalid_input(moto_s3: Any, body: bytes, match: str) -> None:
    moto_s3.put_object(Bucket="models", Key="catalog.json", Body=body)
    with pytest.raises(InvalidInput, match=match):
        load_catalog(BotoS3Reader(moto_s3, "models"), "catalog.json")


def test_generic_model_deploys_without_catalog_entry(moto_s3: Any, tmp_path: Path) -> None:
    written = write_model(tmp_path / "some-model", TINY, decoder_tensors(TINY))
    upload_folder(moto_s3, "models", "", written.path)
    manifest = read_manifest(BotoS3Reader(moto_s3, "models"), "", "some-model", builtin_catalog())
    result = plan(manifest, seed_snapshot(), DeployRequest(model="some-model"), Policy())
    assert result.fits and not result.in_catalog and result.tier is None
    assert any("not in the catalog" in w for w in result.warnings)


def test_catalog_variant_and_conventional_awq_folder(moto_s3: Any, tmp_path: Path) -> None:
    # Given a generic model with a "<name>-awq" folder that is a real AWQ checkpoint
    big = {**TINY, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
    awq = {
        **big,
        "torch_dtype": "float16",
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
    }
    upload_folder(moto_s3, "models", "", write_model(tmp_path / "gen", big, decoder_tensors(big)).path)
    awq_folder = write_model(tmp_path / "gen-awq", awq, decoder_tensors(awq, "F16"))
    upload_folder(moto_s3, "models", "", awq_folder.path)
    reader = BotoS3Reader(moto_s3, "models")

    manifest = read_manifest(reader, "", "gen", builtin_catalog())
    assert manifest.awq_variant is not None and manifest.awq_variant.name == "gen-awq"
    # When a tiny policy threshold forces quantization, the variant is preferred
    policy = Policy(quantize_above_bytes=1)
    result = plan(manifest, seed_snapshot(), DeployRequest(model="gen"), policy)
    assert (result.quantization, result.deploy_model) == ("awq", "gen-awq")
    # And prefer_awq_variant=False turns that off
    no_variant = Policy(quantize_above_bytes=0, prefer_awq_variant=False)
    result = plan(manifest, seed_snapshot(), DeployRequest(model="gen"), no_variant)
    assert (result.quantization, result.deploy_model) == ("bnb-4bit", "gen")

    # A folder named like a variant that is not AWQ is ignored with a warning
    upload_folder(moto_s3, "models", "", write_model(tmp_path / "plain", big, decoder_tensors(big)).path)
    upload_folder(moto_s3, "models", "", write_model(tmp_path / "plain-awq", big, decoder_tensors(big)).path)
    manifest = read_manifest(reader, "", "plain", builtin_catalog())
    assert manifest.awq_variant is None
    assert any("not an AWQ checkpoint" in w for w in manifest.warnings)
