"""The manifest: S3 listing + config.json + safetensors headers (moto, small objects)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from asoba_deploy.core.catalog import builtin_catalog
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.errors import InvalidInput, ModelNotFound
from asoba_deploy.core.manifest import read_manifest, shape_from_config
from asoba_deploy.core.planner import plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import BotoS3Reader, CountingReader
from asoba_deploy.core.safetensors_header import read_header
from local.sparse_models import (
    QWEN3_14B,
    Tensor,
    decoder_tensors,
    encode_header,
    upload_folder,
    write_adapter,
    write_model,
)
from tests.unit.planner_support import seed_snapshot

TINY: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 256,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
TINY_PARAMS = 2 * 256 * 64 + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 128 + 2 * 64) + 64


def reader_for(client: Any) -> CountingReader:
    return CountingReader(BotoS3Reader(client, "models"))


def put(client: Any, key: str, body: bytes | str) -> None:
    client.put_object(Bucket="models", Key=key, Body=body.encode() if isinstance(body, str) else body)


def test_sharded_model_exact_counts_from_headers(moto_s3: Any, tmp_path: Path) -> None:
    # Given a 3-shard bf16 model with its index
    written = write_model(tmp_path / "tiny", TINY, decoder_tensors(TINY), shards=3)
    upload_folder(moto_s3, "models", "", written.path)
    reader = reader_for(moto_s3)

    # When its manifest is read
    manifest = read_manifest(reader, "", "tiny", builtin_catalog())

    # Then parameters and bytes are exact, and only headers were read from the shards
    assert manifest.weights.source == "safetensors-header"
    assert manifest.weights.parameters == TINY_PARAMS
    assert manifest.weights.dtype_bytes == {"BF16": TINY_PARAMS * 2}
    assert manifest.weights.embedding.elements == 2 * 256 * 64
    assert manifest.weights.other.elements == 5 * 64
    assert len(manifest.weight_files) == 3
    assert manifest.total_bytes == written.total_bytes
    assert manifest.shape.kv_elements_per_token() == 2 * 2 * 2 * 16
    assert manifest.catalog is None and manifest.awq_variant is None
    for key, start, length in reader.ranges:
        if key.endswith(".safetensors"):
            name = key.rsplit("/", 1)[1]
            assert start + length <= written.header_bytes[name]
    assert {f.role for f in manifest.files} >= {"config", "index", "weights", "tokenizer"}


def test_single_file_without_index(moto_s3: Any, tmp_path: Path) -> None:
    written = write_model(tmp_path / "single", TINY, decoder_tensors(TINY))
    upload_folder(moto_s3, "models", "pre/", written.path)
    manifest = read_manifest(reader_for(moto_s3), "pre", "single", builtin_catalog())
    assert [f.path for f in manifest.weight_files] == ["model.safetensors"]
    assert manifest.source_uri == "s3://models/pre/single/"
    assert manifest.weights.parameters == TINY_PARAMS


def test_bin_only_model_falls_back_to_file_sizes(moto_s3: Any) -> None:
    put(moto_s3, "old/config.json", json.dumps(TINY))
    put(moto_s3, "old/pytorch_model.bin", b"\0" * (TINY_PARAMS * 2))
    manifest = read_manifest(reader_for(moto_s3), "", "old", builtin_catalog())
    assert manifest.weights.source == "file-size"
    assert manifest.weights.parameters == TINY_PARAMS
    assert any("estimated from the sizes" in w for w in manifest.warnings)
    result = plan(manifest, seed_snapshot(), DeployRequest(model="old"), Policy())
    assert result.fits and result.action == "coexist"
    assert any("estimated from the sizes" in w for w in result.warnings)


def test_unneeded_files_are_skipped(moto_s3: Any, tmp_path: Path) -> None:
    written = write_model(tmp_path / "both", TINY, decoder_tensors(TINY))
    upload_folder(moto_s3, "models", "", written.path)
    put(moto_s3, "both/pytorch_model.bin", b"\0" * 1000)
    put(moto_s3, "both/original/consolidated.00.pth", b"\0" * 1000)
    put(moto_s3, "both/.cache/huggingface/download/x.metadata", b"x")
    manifest = read_manifest(reader_for(moto_s3), "", "both", builtin_catalog())
    assert {f.path for f in manifest.skipped} == {
        "pytorch_model.bin",
        "original/consolidated.00.pth",
        ".cache/huggingface/download/x.metadata",
    }
    assert "model.safetensors" in {f.path for f in manifest.files}
    assert any("not syncing 3 file(s)" in w for w in manifest.warnings)


def test_prequantized_awq_checkpoint(moto_s3: Any, tmp_path: Path) -> None:
    config = {
        **TINY,
        "torch_dtype": "float16",
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32},
    }
    tensors = [
        Tensor("model.layers.0.self_attn.q_proj.qweight", "I32", (64, 8)),
        Tensor("model.layers.0.self_attn.q_proj.qzeros", "I32", (2, 8)),
        Tensor("model.layers.0.self_attn.q_proj.scales", "F16", (2, 64)),
        Tensor("model.embed_tokens.weight", "F16", (256, 64)),
    ]
    written = write_model(tmp_path / "tiny-awq", config, tensors)
    upload_folder(moto_s3, "models", "", written.path)
    manifest = read_manifest(reader_for(moto_s3), "", "tiny-awq", builtin_catalog())
    assert manifest.quantization is not None and manifest.quantization.kind == "awq"
    assert manifest.weights.quantized.stored_bytes == 64 * 8 * 4 + 2 * 8 * 4 + 2 * 64 * 2
    assert manifest.weights.parameters == 64 * 64 + 256 * 64
    result = plan(manifest, seed_snapshot(), DeployRequest(model="tiny-awq", force_quantize=True), Policy())
    assert (result.quantization, result.prequantized, result.dtype) == ("awq", True, "float16")
    assert any("force_quantize ignored" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}, "gptq"),
        ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}, "bnb-4bit"),
        ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}, "bnb-8bit"),
        ({"quantization_config": {"quant_method": "fp8"}}, None),
    ],
)
def test_quantization_config_detection(
    moto_s3: Any, tmp_path: Path, extra: dict[str, Any], kind: str
) -> None:
    written = write_model(tmp_path / "q", {**TINY, **extra}, decoder_tensors(TINY, "F16"))
    upload_folder(moto_s3, "models", "", written.path)
    manifest = read_manifest(reader_for(moto_s3), "", "q", builtin_catalog())
    assert manifest.quantization is not None and manifest.quantization.kind == kind
    result = plan(manifest, seed_snapshot(), DeployRequest(model="q"), Policy())
    if kind is None:
        assert not result.fits
        assert any("'fp8'" in s and "does not load" in s for s in result.shortfalls)
    else:
        assert result.fits and result.quantization == kind and result.prequantized


def test_legacy_gptq_quantize_config_file(moto_s3: Any, tmp_path: Path) -> None:
    written = write_model(tmp_path / "g", TINY, decoder_tensors(TINY, "F16"))
    upload_folder(moto_s3, "models", "", written.path)
    put(moto_s3, "g/quantize_config.json", json.dumps({"bits": 4, "group_size": 128, "desc_act": False}))
    manifest = read_manifest(reader_for(moto_s3), "", "g", builtin_catalog())
    assert manifest.quantization is not None
    assert (manifest.quantization.kind, manifest.quantization.bits) == ("gptq", 4)


def test_adapter_resolves_its_base_and_plans_both(moto_s3: Any, tmp_path: Path) -> None:
    # Given a LoRA adapter whose config names "someorg/tiny-base", and that base in the bucket
    base = write_model(tmp_path / "tiny-base", TINY, decoder_tensors(TINY))
    adapter = write_adapter(tmp_path / "tiny-lora", TINY, "someorg/tiny-base", r=4)
    upload_folder(moto_s3, "models", "", base.path)
    upload_folder(moto_s3, "models", "", adapter.path)

    manifest = read_manifest(reader_for(moto_s3), "", "tiny-lora", builtin_catalog())
    assert manifest.adapter is not None and manifest.adapter.base_model == "tiny-base"
    assert manifest.base is not None and manifest.base.weights.parameters == TINY_PARAMS
    lora_params = 2 * (4 * 64 + 64 * 4) * 2 + 2 * (4 * 64 + 32 * 4) * 2
    assert manifest.weights.parameters == lora_params

    result = plan(manifest, seed_snapshot(), DeployRequest(model="tiny-lora"), Policy())
    assert result.fits
    assert (result.base_model, result.base_model_path) == ("tiny-base", "/opt/models/tiny-base")
    assert result.model_path == "/opt/models/tiny-lora"
    assert {f.local_path.split("/")[3] for f in result.files} == {"tiny-base", "tiny-lora"}
    assert result.total_bytes == base.total_bytes + adapter.total_bytes
    # Adapter tensors count at fp32 on top of the bf16 base.
    assert result.gpu.breakdown["weights"] == TINY_PARAMS * 2 + lora_params * 4
    assert result.parameters == TINY_PARAMS + lora_params


def test_adapter_without_its_base_is_model_not_found(moto_s3: Any, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "orphan", TINY, "someorg/missing-base")
    upload_folder(moto_s3, "models", "", adapter.path)
    with pytest.raises(ModelNotFound, match="missing-base"):
        read_manifest(reader_for(moto_s3), "", "orphan", builtin_catalog())


def test_missing_model_folder(moto_s3: Any) -> None:
    with pytest.raises(ModelNotFound, match="not in the bucket"):
        read_manifest(reader_for(moto_s3), "", "nothing-here", builtin_catalog())
    with pytest.raises(ModelNotFound, match="listed in the catalog"):
        read_manifest(reader_for(moto_s3), "", "qwen3-14b", builtin_catalog())


def test_folder_without_config_or_weights(moto_s3: Any) -> None:
    put(moto_s3, "noconfig/model.safetensors", b"x" * 16)
    with pytest.raises(ModelNotFound, match=r"no config\.json"):
        read_manifest(reader_for(moto_s3), "", "noconfig", builtin_catalog())
    put(moto_s3, "noweights/config.json", json.dumps(TINY))
    with pytest.raises(ModelNotFound, match="no weights"):
        read_manifest(reader_for(moto_s3), "", "noweights", builtin_catalog())


def test_index_naming_a_missing_shard(moto_s3: Any, tmp_path: Path) -> None:
    written = write_model(tmp_path / "holes", TINY, decoder_tensors(TINY), shards=2)
    upload_folder(moto_s3, "models", "", written.path)
    moto_s3.delete_object(Bucket="models", Key="holes/model-00002-of-00002.safetensors")
    with pytest.raises(ModelNotFound, match="missing from the bucket"):
        read_manifest(reader_for(moto_s3), "", "holes", builtin_catalog())


def test_truncated_shard_is_detected_from_its_header(moto_s3: Any) -> None:
    header, data_bytes = encode_header(decoder_tensors(TINY))
    put(moto_s3, "cut/config.json", json.dumps(TINY))
    put(moto_s3, "cut/model.safetensors", header + b"\0" * (data_bytes // 2))
    with pytest.raises(ModelNotFound, match="truncated"):
        read_manifest(reader_for(moto_s3), "", "cut", builtin_catalog())


def test_header_reader_rejects_garbage(moto_s3: Any) -> None:
    put(moto_s3, "bad/a.safetensors", struct.pack("<Q", 10**12) + b"{}")
    put(moto_s3, "bad/b.safetensors", struct.pack("<Q", 4) + b"nope")
    reader = reader_for(moto_s3)
    with pytest.raises(ModelNotFound, match="not plausible"):
        read_header(reader, "bad/a.safetensors", 10)
    with pytest.raises(ModelNotFound, match="not valid JSON"):
        read_header(reader, "bad/b.safetensors", 12)
    # Exactly two ranged GETs: 8 bytes, then the header.
    assert [(start, length) for _, start, length in reader.ranges] == [(0, 8), (0, 8), (8, 4)]


def test_invalid_model_name_is_refused(moto_s3: Any) -> None:
    with pytest.raises(ValueError, match="one name"):
        read_manifest(reader_for(moto_s3), "", "../etc", builtin_catalog())


def test_oversized_json_is_refused(moto_s3: Any) -> None:
    put(moto_s3, "big/config.json", b" " * 64)
    reader = BotoS3Reader(moto_s3, "models")
    with pytest.raises(InvalidInput, match="above the 10 byte limit"):
        reader.read_object("big/config.json", 10)
    assert reader.read_object("big/absent.json", 10) is None


def test_shape_from_config_handles_variants() -> None:
    qwen = shape_from_config(QWEN3_14B)
    assert (qwen.num_hidden_layers, qwen.num_key_value_heads, qwen.head_dim) == (40, 8, 128)
    text = {k: v for k, v in TINY.items() if k != "torch_dtype"}
    nested = shape_from_config({"architectures": ["X"], "text_config": {**text, "dtype": "float16"}})
    assert (nested.num_hidden_layers, nested.head_dim, nested.torch_dtype) == (2, 16, "float16")
    gpt2 = shape_from_config({"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024})
    assert (gpt2.num_key_value_heads, gpt2.head_dim, gpt2.max_position_embeddings) == (12, 64, 1024)
    assert shape_from_config({}).kv_elements_per_token() is None


def test_adapter_base_from_catalog_and_prequantized_base(moto_s3: Any, tmp_path: Path) -> None:
    # Given an adapter whose config names a hub id unknown here, and a catalog naming its base
    from asoba_deploy.core.catalog import Catalog

    config = {
        **TINY,
        "torch_dtype": "float16",
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32},
    }
    base = write_model(tmp_path / "qbase", config, decoder_tensors(TINY, "F16"))
    adapter = write_adapter(tmp_path / "qlora", TINY, "hub-org/Some-Model-7B", r=2)
    upload_folder(moto_s3, "models", "", base.path)
    upload_folder(moto_s3, "models", "", adapter.path)
    catalog = builtin_catalog().merged({"models": {"qlora": {"base_model": "qbase"}}}, "test")

    manifest = read_manifest(reader_for(moto_s3), "", "qlora", catalog)
    assert isinstance(catalog, Catalog) and manifest.adapter is not None
    assert manifest.adapter.base_model == "qbase"
    result = plan(manifest, seed_snapshot(), DeployRequest(model="qlora"), Policy())
    # Then the base's own quantization is what the plan loads
    assert (result.quantization, result.prequantized, result.base_model) == ("gptq", True, "qbase")


def test_plan_lists_skipped_files_and_counts_a_mirrored_cache(moto_s3: Any, tmp_path: Path) -> None:
    written = write_model(tmp_path / "mirror", TINY, decoder_tensors(TINY))
    upload_folder(moto_s3, "models", "", written.path)
    put(moto_s3, "mirror/original/consolidated.00.pth", b"\0" * 1000)
    manifest = read_manifest(reader_for(moto_s3), "", "mirror", builtin_catalog())
    result = plan(manifest, seed_snapshot(), DeployRequest(model="mirror"), Policy())
    assert result.skipped_files == ["mirror/original/consolidated.00.pth"]
    assert (result.skipped_bytes, result.bytes_to_transfer) == (1000, written.total_bytes)
    # A cached copy that mirrored the whole folder (skipped file included) counts as cached.
    mirrored = {"name": "mirror", "bytes": written.total_bytes + 1000, "files": len(written.files) + 1}
    result = plan(manifest, seed_snapshot(cached_models=[mirrored]), DeployRequest(model="mirror"), Policy())
    assert result.bytes_to_transfer == 0
    stale = {"name": "mirror", "bytes": 5, "files": 1}
    result = plan(manifest, seed_snapshot(cached_models=[stale]), DeployRequest(model="mirror"), Policy())
    assert result.bytes_to_transfer == written.total_bytes
    assert any("holds a different copy" in w for w in result.warnings)


def test_shards_come_from_the_listing_and_the_index_is_not_read(moto_s3: Any, tmp_path: Path) -> None:
    # Given a 3-shard model (save_pretrained's names) and its index
    written = write_model(tmp_path / "listed", TINY, decoder_tensors(TINY), shards=3)
    upload_folder(moto_s3, "models", "", written.path)
    reader = reader_for(moto_s3)

    manifest = read_manifest(reader, "", "listed", builtin_catalog())

    # Then the shards are the listing's, the index is synced but never read
    assert [f.path for f in manifest.weight_files] == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert not any(key.endswith(".index.json") for key, _, _ in reader.ranges)
    assert "model.safetensors.index.json" in {f.path for f in manifest.files}
    assert manifest.weights.parameters == TINY_PARAMS


def test_shards_named_otherwise_are_found_through_the_index(moto_s3: Any, tmp_path: Path) -> None:
    written = write_model(tmp_path / "custom", TINY, decoder_tensors(TINY), shards=2, weights_name="part")
    index = json.loads((written.path / "part.safetensors.index.json").read_text())
    (written.path / "part.safetensors.index.json").unlink()
    (written.path / "model.safetensors.index.json").write_text(json.dumps(index))
    upload_folder(moto_s3, "models", "", written.path)
    reader = reader_for(moto_s3)
    manifest = read_manifest(reader, "", "custom", builtin_catalog())
    assert sorted(f.path for f in manifest.weight_files) == [
        "part-00001-of-00002.safetensors",
        "part-00002-of-00002.safetensors",
    ]
    assert any(key.endswith("model.safetensors.index.json") for key, _, _ in reader.ranges)
    assert manifest.weights.source == "safetensors-header" and manifest.weights.parameters == TINY_PARAMS


def test_headers_over_the_budget_are_sampled_with_exact_totals(moto_s3: Any, tmp_path: Path) -> None:
    # Given a 6-shard model whose lm_head sits in the 3rd shard (not first or last)
    from asoba_deploy.core.manifest import ModelShape, read_weight_stats
    from asoba_deploy.core.s3 import ObjectInfo

    tensors = decoder_tensors({**TINY, "num_hidden_layers": 6})
    head = next(t for t in tensors if t.name == "lm_head.weight")
    tensors.remove(head)
    tensors.insert(len(tensors) // 2, head)
    written = write_model(tmp_path / "wide", {**TINY, "num_hidden_layers": 6}, tensors, shards=6)
    upload_folder(moto_s3, "models", "", written.path)
    files = [
        ObjectInfo(key=f"wide/{name}", size=written.files[name])
        for name in sorted(written.files)
        if name.endswith(".safetensors")
    ]
    shape = ModelShape(vocab_size=256, tie_word_embeddings=False)
    exact, _ = read_weight_stats(reader_for(moto_s3), files, shape, None, [])
    assert exact.source == "safetensors-header" and exact.headers_read == 6

    # When read with a budget that holds one header only
    reader = reader_for(moto_s3)
    warnings: list[str] = []
    sampled, _ = read_weight_stats(reader, files, shape, None, warnings, budget=1)

    # Then the sample reads on until both embeddings are found: the first, the last, then in
    # order up to the shard holding lm_head
    index = json.loads((written.path / "model.safetensors.index.json").read_text())
    head_shard = int(index["weight_map"]["lm_head.weight"].split("-")[1])
    assert 1 < head_shard < 6
    reads = 2 + (head_shard - 1)
    assert sampled.source == "safetensors-sampled"
    assert (sampled.headers_read, sampled.headers_total) == (reads, 6)
    assert sampled.embedding == exact.embedding
    # The totals are exact (tensor bytes from sizes and header lengths), the split within 1 %
    assert sampled.stored_bytes == exact.stored_bytes
    assert sampled.parameters == exact.parameters
    assert sampled.dtype_bytes == exact.dtype_bytes
    assert sampled.largest_file_bytes == exact.largest_file_bytes
    assert abs(sampled.linear.elements - exact.linear.elements) <= 0.01 * exact.linear.elements
    (warning,) = warnings
    assert warning.startswith(f"read the headers of {reads} of 6 weight files")
    # And two shards' headers were never asked for beyond their 8-byte length
    lengths = {key for key, start, _ in reader.ranges if start == 8}
    assert len(lengths) == reads
