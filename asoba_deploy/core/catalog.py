"""The model catalog: the seed's six models, their tiers and relations.

Built in: the seed's table (tier 1 "production ready", tier 2 "raw models") and the AWQ
variant relation qwen3-14b -> qwen3-14b-awq. A catalog file in the bucket (CATALOG_KEY,
default `catalog.json` under the models prefix), when present, overrides fields of
built-in entries and adds new ones:

    {"models": {"qwen3-14b": {"awq_variant": "qwen3-14b-awq-v2"},
                "my-adapter": {"tier": 2, "base_model": "deepseek-r1-8b"}}}

A model that is in neither but has a folder in the bucket deploys generically (tier null).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from asoba_deploy.core.contracts import check_model_name, describe_validation_error
from asoba_deploy.core.errors import InvalidInput
from asoba_deploy.core.s3 import S3Reader

MAX_CATALOG_BYTES = 1024 * 1024
# S3 answers 403, not 404, for a missing key to a principal whose s3:ListBucket does not cover
# the request (the Plan role's is conditioned on s3:prefix, which a GetObject does not carry).
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})

logger = logging.getLogger(__name__)


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    tier: Literal[1, 2] | None = None
    description: str = ""
    # A pre-quantized (AWQ) folder in the same bucket to prefer when this model must be quantized.
    awq_variant: str | None = None
    # For a variant: the model it was quantized from (informational).
    variant_of: str | None = None
    # For an adapter: the bucket folder of its base model (else resolved from adapter_config.json).
    base_model: str | None = None

    @field_validator("name", "awq_variant", "variant_of", "base_model")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)


class _EntryOverride(BaseModel):
    """A catalog file's entry: every field optional, unknown fields refused."""

    model_config = ConfigDict(extra="forbid")

    tier: Literal[1, 2] | None = None
    description: str | None = None
    awq_variant: str | None = None
    variant_of: str | None = None
    base_model: str | None = None


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, _EntryOverride] = Field(default_factory=dict)


BUILTIN_ENTRIES: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="mistral_policy_analysis",
        tier=1,
        description="Mistral fine-tune for policy analysis (~298 MB); coexists with Flux",
    ),
    CatalogEntry(
        name="mistral_iac_generation",
        tier=1,
        description="Mistral fine-tune for infrastructure-as-code generation (~297 MB); coexists with Flux",
    ),
    CatalogEntry(
        name="qwen3-14b",
        tier=1,
        description="Qwen3-14B, bf16 (~28 GB); replaces Flux and is quantized",
        awq_variant="qwen3-14b-awq",
    ),
    CatalogEntry(
        name="qwen3-14b-awq",
        tier=2,
        description="Qwen3-14B pre-quantized with AWQ (~10 GB)",
        variant_of="qwen3-14b",
    ),
    CatalogEntry(
        name="qwen3-coder-30b",
        tier=2,
        description="Qwen3-Coder-30B-A3B MoE, bf16 (~62 GB); 4-bit on load",
    ),
    CatalogEntry(
        name="deepseek-r1-8b",
        tier=2,
        description="DeepSeek-R1-Distill-Llama-8B, bf16 (~16 GB); quantization optional",
    ),
)


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    entries: dict[str, CatalogEntry]
    source: str = "builtin"

    def get(self, name: str) -> CatalogEntry | None:
        return self.entries.get(name)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def merged(self, document: Any, source: str) -> Catalog:
        """This catalog overridden and extended by a catalog file's parsed JSON."""
        try:
            parsed = _CatalogFile.model_validate(document)
        except ValidationError as error:
            raise InvalidInput(f"{source}: {describe_validation_error(error)}") from None
        entries = dict(self.entries)
        try:
            for name, override in parsed.models.items():
                fields = override.model_dump(exclude_unset=True)
                base = entries.get(name)
                data = {**(base.model_dump() if base else {}), **fields, "name": name}
                entries[name] = CatalogEntry.model_validate(data)
        except ValidationError as error:
            raise InvalidInput(f"{source}: {describe_validation_error(error)}") from None
        return Catalog(entries=entries, source=f"{self.source}+{source}")


def builtin_catalog() -> Catalog:
    return Catalog(entries={entry.name: entry for entry in BUILTIN_ENTRIES})


def load_catalog(reader: S3Reader, key: str) -> Catalog:
    """The built-in catalog, overridden by `key` in the bucket when that object exists."""
    catalog = builtin_catalog()
    source = f"s3://{reader.bucket}/{key}"
    try:
        raw = reader.read_object(key, MAX_CATALOG_BYTES)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code not in _DENIED_CODES:
            raise
        logger.warning(
            "%s: %s (%s), read as no catalog file: S3 answers 403 for a missing key when "
            "s3:ListBucket does not cover it; using the built-in catalog",
            source,
            code,
            error.response.get("Error", {}).get("Message", ""),
        )
        return catalog
    if raw is None:
        return catalog
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{source} is not valid JSON: {error}") from None
    return catalog.merged(document, source)
