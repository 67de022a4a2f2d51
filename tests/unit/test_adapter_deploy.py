"""An adapter's deployment as the planner and the step registry see it: the base's weights count
in the memory need, each of the two folders is counted for its sync (bounded in the state), sync
is sent the base, install the base's path, and a base that changed after planning fails the sync."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from asoba_deploy.core.catalog import builtin_catalog
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.errors import SyncFailed
from asoba_deploy.core.manifest import Manifest, read_manifest
from asoba_deploy.core.planner import Plan, plan
from asoba_deploy.core.planner.estimate import ADAPTER_BYTES_PER_PARAM, Option, ram_need, weights_bytes
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import BotoS3Reader
from asoba_deploy.core.steps import (
    check_sync,
    install_parameters,
    sync_expectation,
    sync_parameters,
)
from local.sparse_models import decoder_tensors, upload_folder, write_adapter, write_model
from tests.unit.planner_support import seed_snapshot
from tests.unit.test_manifest import TINY, TINY_PARAMS
from tests.unit.test_steps import CONFIG, DOCUMENTS, state_with

SKIPPED_BASE_FILE = ("model.gguf", b"\0" * 3000)  # another weight format: synced, not loaded


@pytest.fixture
def adapter_manifest(moto_s3: Any, tmp_path: Path) -> Manifest:
    # A base with a file the runtime does not load (synced, not needed), and an adapter naming it
    base = write_model(
        tmp_path / "tiny-base",
        TINY,
        decoder_tensors(TINY),
        extra_files={SKIPPED_BASE_FILE[0]: SKIPPED_BASE_FILE[1], "tokenizer.json": b"{}"},
    )
    adapter = write_adapter(tmp_path / "tiny-lora", TINY, "someorg/tiny-base", r=4)
    upload_folder(moto_s3, "models", "", base.path)
    upload_folder(moto_s3, "models", "", adapter.path)
    return read_manifest(BotoS3Reader(moto_s3, "models"), "", "tiny-lora", builtin_catalog())


def lora_params() -> int:
    return 2 * (4 * 64 + 64 * 4) * 2 + 2 * (4 * 64 + 32 * 4) * 2


def test_the_weights_are_the_base_and_the_adapter(adapter_manifest: Manifest) -> None:
    policy = Policy()
    assert adapter_manifest.base is not None
    # Unquantized: the bf16 base plus the adapter at fp32
    plain = weights_bytes(Option("none", False, adapter_manifest), policy)
    assert plain == TINY_PARAMS * 2 + lora_params() * ADAPTER_BYTES_PER_PARAM
    # NF4 on load quantizes the base's Linear weights only; the adapter stays fp32 beside them
    stats = adapter_manifest.base.weights
    nf4 = weights_bytes(Option("bnb-4bit", False, adapter_manifest), policy)
    assert nf4 == (
        math.ceil(stats.linear.elements * policy.nf4_bits_per_param / 8)
        + (stats.embedding.elements + stats.other.elements) * 2
        + lora_params() * ADAPTER_BYTES_PER_PARAM
    )
    assert nf4 < plain
    # Loading reads the base's largest file, not only the adapter's
    assert ram_need(Option("none", False, adapter_manifest), policy)["load_buffer"] == max(
        stats.largest_file_bytes, adapter_manifest.weights.largest_file_bytes
    )


def test_the_plan_needs_the_base_in_gpu_memory_and_counts_both_folders(adapter_manifest: Manifest) -> None:
    result = plan(adapter_manifest, seed_snapshot(), DeployRequest(model="tiny-lora"), Policy())
    assert result.fits
    assert result.gpu.breakdown["weights"] == TINY_PARAMS * 2 + lora_params() * ADAPTER_BYTES_PER_PARAM
    assert adapter_manifest.base is not None
    base, adapter = adapter_manifest.base, adapter_manifest
    # What each sync must find in its folder: its files, the skipped ones included (sync mirrors)
    assert (result.source_files, result.source_bytes) == (len(adapter.files), adapter.total_bytes)
    assert result.base_source_files == len(base.files) + 1
    assert result.base_source_bytes == base.total_bytes + len(SKIPPED_BASE_FILE[1])
    # The execution's plan lists at most its first files by name; the counts stay whole
    listed = Plan.model_validate(result.listed(limit=2).model_dump(mode="json"))
    assert len(listed.files) == 2
    assert (listed.base_source_files, listed.base_source_bytes) == (
        result.base_source_files,
        result.base_source_bytes,
    )
    # A plan recorded without the counts gets them back from its full lists
    recorded = result.model_dump(mode="json")
    for key in ("file_count", "source_files", "source_bytes", "base_source_files", "base_source_bytes"):
        recorded.pop(key)
    again = Plan.model_validate(recorded)
    assert (again.source_files, again.base_source_files) == (result.source_files, result.base_source_files)


def declared(document: str) -> dict[str, Any]:
    parameters: dict[str, Any] = yaml.safe_load((DOCUMENTS / f"{document}.yaml").read_text())["parameters"]
    return parameters


def test_sync_gets_the_base_and_install_its_path(adapter_manifest: Manifest) -> None:
    result = plan(adapter_manifest, seed_snapshot(), DeployRequest(model="tiny-lora"), Policy())
    state = state_with(result)

    sync = sync_parameters(CONFIG, state)
    assert (sync["ModelName"], sync["BaseModelName"]) == ("tiny-lora", "tiny-base")
    assert sync["BaseSourceUri"] == "s3://models/tiny-base/"
    install = install_parameters(CONFIG, state)
    assert install["ModelPath"] == "/opt/models/tiny-lora"
    assert install["BaseModelPath"] == "/opt/models/tiny-base"
    for document, sent, names in (
        ("sync", sync, ("BaseModelName", "BaseSourceUri")),
        ("install", install, ("BaseModelPath",)),
    ):
        rules = declared(document)
        for name in names:
            assert re.fullmatch(rules[name]["allowedPattern"], sent[name]), (document, name)
            assert rules[name]["default"] == "", "absent means: not an adapter"


def test_a_model_that_is_no_adapter_sends_no_base(adapter_manifest: Manifest) -> None:
    assert adapter_manifest.base is not None
    result = plan(adapter_manifest.base, seed_snapshot(), DeployRequest(model="tiny-base"), Policy())
    state = state_with(result)
    assert not {"BaseModelName", "BaseSourceUri"} & set(sync_parameters(CONFIG, state))
    assert "BaseModelPath" not in install_parameters(CONFIG, state)
    assert "base" not in sync_expectation(CONFIG, state)


def test_sync_checks_the_base_folder_against_the_plan(adapter_manifest: Manifest) -> None:
    result = plan(adapter_manifest, seed_snapshot(), DeployRequest(model="tiny-lora"), Policy())
    expect = sync_expectation(CONFIG, state_with(result))
    model = {"files_total": result.source_files, "total_bytes": result.source_bytes}
    base = {"files_total": result.base_source_files, "total_bytes": result.base_source_bytes}

    check_sync({**model, "base": base}, expect)  # as planned
    with pytest.raises(SyncFailed, match="base model folder changed"):
        check_sync({**model, "base": {**base, "total_bytes": base["total_bytes"] + 1}}, expect)
    with pytest.raises(SyncFailed, match="base model folder changed"):
        check_sync({**model, "base": None}, expect)  # a document that did not sync the base
    with pytest.raises(SyncFailed, match="the model folder changed"):
        check_sync({**model, "files_total": 0, "base": base}, expect)


def serving_the_base(adapters: str | None = None) -> Any:
    """The seed's instance whose primary unit serves tiny-base (3 GiB of GPU), with `adapters`."""
    snapshot = seed_snapshot()
    primary = {
        "unit": "asoba-inference.service",
        "state": "active",
        "main_pid": 5151,
        "rss_bytes": 2 * 1024**3,
        "gpu_memory_bytes": 3 * 1024**3,
        "port": 8001,
        "model": "tiny-base",
        "model_path": "/opt/models/tiny-base",
        "engine": "transformers",
        "quantization": "none",
        "adapters": adapters,
    }
    services = [s for s in snapshot.model_dump(mode="json")["services"] if s["unit"] != primary["unit"]]
    gpus = snapshot.model_dump(mode="json")["gpus"]
    gpus[0]["memory_used_bytes"] += primary["gpu_memory_bytes"]
    return seed_snapshot(services=[*services, primary], gpus=gpus, listening_ports=[22, 8000, 8001])


def test_with_keep_an_adapter_joins_the_process_that_serves_its_base(adapter_manifest: Manifest) -> None:
    # Given the primary serving the adapter's base, with another adapter already
    snapshot = serving_the_base(adapters="other=/opt/models/other")

    # When the adapter is planned with "resident": "keep"
    result = plan(adapter_manifest, snapshot, DeployRequest(model="tiny-lora", resident="keep"), Policy())

    # Then it joins that unit on its port: only the adapter's own weights are needed, the base's
    # (bf16, once loaded) are what it saves
    assert result.fits, result.shortfalls
    assert (result.unit, result.port, result.action, result.stop_services) == (
        "asoba-inference.service",
        8001,
        "coexist",
        [],
    )
    assert result.joins is not None
    assert (result.joins.unit, result.joins.serving, result.joins.model_path) == (
        "asoba-inference.service",
        "tiny-base",
        "/opt/models/tiny-base",
    )
    assert result.joins.adapters == "other=/opt/models/other,tiny-lora=/opt/models/tiny-lora"
    assert result.gpu.breakdown["weights"] == lora_params() * ADAPTER_BYTES_PER_PARAM
    assert result.joins.gpu_saved_bytes >= TINY_PARAMS * 2
    # the base's memory stays counted: nothing of the unit is freed
    assert result.gpu.used_by_others_after_bytes == snapshot.gpu_used_bytes
    assert not result.replaces_runtime
    assert any("joins that process" in r for r in result.reasons)
    assert any("restarts to load the adapter" in w for w in result.warnings)
    # And install is told to keep that unit's env, ADAPTERS aside
    sent = install_parameters(CONFIG, state_with(result))
    assert (sent["KeepEnv"], sent["Adapters"], sent["ServiceUnit"]) == (
        "true",
        result.joins.adapters,
        "asoba-inference.service",
    )


def test_without_keep_or_without_its_base_served_an_adapter_loads_its_own_base(
    adapter_manifest: Manifest,
) -> None:
    # replace with a stop-start replaces the primary, base and all, as the seed did
    request = DeployRequest(model="tiny-lora", strategy="stop-start")
    replaced = plan(adapter_manifest, serving_the_base(), request, Policy())
    assert replaced.joins is None and replaced.replaces_runtime
    assert replaced.gpu.breakdown["weights"] == TINY_PARAMS * 2 + lora_params() * ADAPTER_BYTES_PER_PARAM
    assert "KeepEnv" not in install_parameters(CONFIG, state_with(replaced))
    # keep, with no process holding its base: a unit of its own with the base loaded
    alone = plan(
        adapter_manifest, seed_snapshot(), DeployRequest(model="tiny-lora", resident="keep"), Policy()
    )
    assert alone.joins is None
    assert alone.gpu.breakdown["weights"] == TINY_PARAMS * 2 + lora_params() * ADAPTER_BYTES_PER_PARAM
