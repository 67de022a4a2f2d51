"""The model manifest, read from S3 without downloading weights.

`read_manifest(reader, prefix, model, catalog)`:
- lists `s3://bucket/<prefix><model>/` (sizes of every file);
- reads config.json (and quantize_config.json / adapter_config.json when present);
- takes the shards from the listing (`<stem>-00001-of-00016.safetensors` beside
  `<stem>.safetensors.index.json`: the index, 1.6 MB for a 128-expert MoE, is not read unless
  the shards are named otherwise), else the top-level *.safetensors files, and reads each
  file's header length (8 bytes: its tensor bytes are then exact, the format leaves no holes)
  and, within HEADER_BUDGET_BYTES per folder, the JSON headers: exact parameter counts, dtypes
  and byte sizes. Headers over the budget (a MoE's 16 shards carry 2.3 MB of them) are read for
  a sample of shards, the first and last (embeddings, lm_head) among them, and the other shards'
  exact tensor bytes are split in the sample's proportions (`source: safetensors-sampled`);
- .bin/.pt-only models fall back to file sizes (parameters = bytes / dtype size), with a warning;
- detects pre-quantized checkpoints (config.json `quantization_config`: awq, gptq,
  bitsandbytes) and adapters (adapter_config.json): the base model is resolved to a bucket
  folder (catalog `base_model`, else `base_model_name_or_path`) and read too;
- for a model with an AWQ variant (catalog `awq_variant`, else a `<model>-awq` folder),
  reads the variant's manifest as well, so the planner (a pure function) can choose it.

Files that the runtime does not need (other weight formats beside safetensors, `original/`,
hidden folders, gguf/onnx/...) are listed in `skipped` and not synced.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from asoba_deploy.core.catalog import Catalog, CatalogEntry
from asoba_deploy.core.contracts import check_model_name
from asoba_deploy.core.errors import InvalidInput, ModelNotFound
from asoba_deploy.core.quantization import Prequantized
from asoba_deploy.core.s3 import ObjectInfo, S3Reader
from asoba_deploy.core.safetensors_header import (
    SafetensorsHeader,
    TensorInfo,
    read_header_json,
    read_header_length,
)

MAX_JSON_BYTES = 64 * 1024 * 1024
DEFAULT_WORKERS = 8
# JSON headers read per model folder: a model and its AWQ variant (or an adapter and its base),
# with their config files, stay under the planner's 1 MB of reads.
HEADER_BUDGET_BYTES = 480_000

FileRole = Literal["config", "index", "weights", "adapter_weights", "tokenizer", "other"]
QuantKind = Prequantized  # the kinds a stored checkpoint can carry (asoba_deploy.core.quantization)

_EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "lm_head.weight",
    "wte.weight",
    "wpe.weight",
    "word_embeddings.weight",
    "embed_out.weight",
    "tok_embeddings.weight",
)
# Storage of a pre-quantized checkpoint (AWQ/GPTQ packing, bitsandbytes states): loaded as stored.
_QUANT_SUFFIXES = (
    ".qweight",
    ".qzeros",
    ".scales",
    ".g_idx",
    ".absmax",
    ".quant_map",
    ".nested_absmax",
    ".nested_quant_map",
    ".SCB",
    ".weight_format",
)
_TORCH_WEIGHT_EXTENSIONS = (".bin", ".pt", ".pth")
_OTHER_WEIGHT_EXTENSIONS = (".gguf", ".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".ggml")
_SKIPPED_FOLDERS = ("original", "onnx", "openvino", "coreml", "gguf", "tflite", "flax")
_TOKENIZER_PATTERNS = re.compile(
    r"^(tokenizer.*|vocab\..*|merges\.txt|special_tokens_map\.json|added_tokens\.json|"
    r".*\.tiktoken|chat_template.*|.*\.model)$"
)
_ADAPTER_WEIGHT_FILES: tuple[str, ...] = ("adapter_model.safetensors", "adapter_model.bin")
WeightFormat = Literal["safetensors", "torch"]
_WEIGHT_INDEXES: dict[str, WeightFormat] = {
    "model.safetensors.index.json": "safetensors",
    "pytorch_model.bin.index.json": "torch",
}
_CONFIG_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "adapter_config.json",
        "quantize_config.json",
        "preprocessor_config.json",
    }
)


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str  # full S3 key
    path: str  # relative to the model folder
    bytes: int = Field(ge=0)
    role: FileRole


class TensorGroup(BaseModel):
    elements: int = 0
    stored_bytes: int = 0

    def add(self, elements: int, stored_bytes: int) -> None:
        self.elements += elements
        self.stored_bytes += stored_bytes


class WeightStats(BaseModel):
    """Tensors grouped by how they are held in GPU memory.

    linear:    floating matrices a 4-bit quantizer converts (attention, MLP, experts, router)
    embedding: embed_tokens / lm_head: stay 16-bit under bitsandbytes
    other:     1-D floats (norms, biases): 16-bit
    quantized: storage of a pre-quantized checkpoint (packed ints, scales, zeros): as stored
    """

    source: Literal["safetensors-header", "safetensors-sampled", "file-size"]
    # safetensors: the weight files whose JSON header was read, of how many (sampled: fewer).
    headers_read: int = 0
    headers_total: int = 0
    tensors: int = 0
    parameters: int = 0
    linear: TensorGroup = Field(default_factory=TensorGroup)
    embedding: TensorGroup = Field(default_factory=TensorGroup)
    other: TensorGroup = Field(default_factory=TensorGroup)
    quantized: TensorGroup = Field(default_factory=TensorGroup)
    dtype_bytes: dict[str, int] = Field(default_factory=dict)  # stored bytes per dtype
    largest_file_bytes: int = 0

    @property
    def stored_bytes(self) -> int:
        return (
            self.linear.stored_bytes
            + self.embedding.stored_bytes
            + self.other.stored_bytes
            + self.quantized.stored_bytes
        )

    @property
    def float_elements(self) -> int:
        return self.linear.elements + self.embedding.elements + self.other.elements


class ModelShape(BaseModel):
    """What the planner needs from config.json (text model's config for multimodal ones)."""

    architecture: str | None = None
    model_type: str | None = None
    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False
    num_experts: int | None = None
    num_experts_per_tok: int | None = None
    torch_dtype: str | None = None

    def kv_elements_per_token(self) -> int | None:
        """2 (K and V) x layers x kv_heads x head_dim, None when the config lacks them."""
        layers, kv_heads, head_dim = self.num_hidden_layers, self.num_key_value_heads, self.head_dim
        if not layers or not kv_heads or not head_dim:
            return None
        return 2 * layers * kv_heads * head_dim


class QuantizationInfo(BaseModel):
    method: str  # quant_method as written (awq, gptq, bitsandbytes, fp8, ...)
    bits: int | None = None
    group_size: int | None = None
    kind: QuantKind | None = None  # None: a method the runtime does not support


class AdapterInfo(BaseModel):
    peft_type: str | None = None
    base_model_name_or_path: str | None = None
    base_model: str  # the bucket folder it resolved to
    r: int | None = None
    target_modules: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """One model folder in the bucket, as far as planning needs it."""

    name: str
    bucket: str
    prefix: str  # the model folder's key prefix, ending in "/"
    source_uri: str
    files: list[ManifestFile]  # to sync
    skipped: list[ManifestFile] = Field(default_factory=list)  # present, not needed
    shape: ModelShape
    weights: WeightStats
    quantization: QuantizationInfo | None = None
    adapter: AdapterInfo | None = None
    base: Manifest | None = None
    awq_variant: Manifest | None = None
    catalog: CatalogEntry | None = None
    warnings: list[str] = Field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def weight_files(self) -> list[ManifestFile]:
        return [f for f in self.files if f.role in ("weights", "adapter_weights")]

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight files, the base model's included for an adapter."""
        own = sum(f.bytes for f in self.weight_files)
        return own + (self.base.weight_bytes if self.base else 0)


# ---------------------------------------------------------------------------------------------
# Pure parts: config, file roles, tensor statistics.


def shape_from_config(config: Mapping[str, Any]) -> ModelShape:
    """The planner's view of a Hugging Face config.json."""
    text = config
    nested = config.get("text_config")
    if isinstance(nested, Mapping) and "num_hidden_layers" not in config:
        text = {**config, **nested}

    def number(*names: str) -> int | None:
        for name in names:
            value = text.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    architectures = config.get("architectures") or []
    hidden = number("hidden_size", "n_embd", "d_model")
    heads = number("num_attention_heads", "n_head")
    head_dim = number("head_dim")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    dtype = text.get("torch_dtype") or text.get("dtype")
    return ModelShape(
        architecture=str(architectures[0]) if architectures else None,
        model_type=str(config["model_type"]) if config.get("model_type") else None,
        num_hidden_layers=number("num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=number("num_key_value_heads", "num_kv_heads", "multi_query_group_num") or heads,
        head_dim=head_dim,
        vocab_size=number("vocab_size"),
        max_position_embeddings=number("max_position_embeddings", "n_positions", "max_seq_len"),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        num_experts=number("num_experts", "num_local_experts", "n_routed_experts"),
        num_experts_per_tok=number("num_experts_per_tok"),
        torch_dtype=str(dtype) if dtype else None,
    )


def quantization_from_config(
    config: Mapping[str, Any], quantize_config: Mapping[str, Any] | None = None
) -> QuantizationInfo | None:
    """The pre-quantization a checkpoint declares, None for a plain one."""
    raw = config.get("quantization_config")
    if not isinstance(raw, Mapping):
        raw = None
    if raw is None and quantize_config is not None:  # AutoGPTQ's legacy file
        raw = {"quant_method": quantize_config.get("quant_method", "gptq"), **quantize_config}
    if raw is None:
        return None
    method = str(raw.get("quant_method", "unknown")).lower()
    bits = raw.get("bits") if isinstance(raw.get("bits"), int) else raw.get("w_bit")
    group_size = raw.get("group_size") if isinstance(raw.get("group_size"), int) else raw.get("q_group_size")
    kind: QuantKind | None = None
    if method == "awq":
        kind = "awq"
    elif method == "gptq":
        kind = "gptq"
    elif method == "bitsandbytes":
        if raw.get("load_in_4bit"):
            kind, bits = "bnb-4bit", 4
        elif raw.get("load_in_8bit"):
            kind, bits = "bnb-8bit", 8
    return QuantizationInfo(
        method=method,
        bits=bits if isinstance(bits, int) else None,
        group_size=group_size if isinstance(group_size, int) else None,
        kind=kind,
    )


def _is_quant_storage(tensor: TensorInfo) -> bool:
    return not tensor.is_float or tensor.name.endswith(_QUANT_SUFFIXES) or ".quant_state." in tensor.name


def stats_from_headers(headers: Iterable[SafetensorsHeader], bits: int | None = None) -> WeightStats:
    """Group every tensor of the headers; `bits` unpacks packed int weights into a parameter count."""
    stats = WeightStats(source="safetensors-header")
    for header in headers:
        stats.largest_file_bytes = max(stats.largest_file_bytes, header.file_bytes)
        for tensor in header.tensors:
            elements = tensor.elements
            stats.tensors += 1
            stats.dtype_bytes[tensor.dtype] = stats.dtype_bytes.get(tensor.dtype, 0) + tensor.nbytes
            if _is_quant_storage(tensor):
                stats.quantized.add(elements, tensor.nbytes)
                if tensor.name.endswith(".qweight") and tensor.dtype == "I32":
                    stats.parameters += elements * (32 // (bits or 4))
                elif tensor.dtype == "U8" and tensor.name.endswith(".weight"):
                    stats.parameters += elements * (2 if (bits or 4) == 4 else 1)
                elif tensor.dtype == "I8" and tensor.name.endswith(".weight"):
                    stats.parameters += elements
                continue
            stats.parameters += elements
            if tensor.name.endswith(_EMBEDDING_SUFFIXES):
                stats.embedding.add(elements, tensor.nbytes)
            elif len(tensor.shape) >= 2:
                stats.linear.add(elements, tensor.nbytes)
            else:
                stats.other.add(elements, tensor.nbytes)
    return stats


def stats_from_file_sizes(files: Iterable[ManifestFile], shape: ModelShape) -> WeightStats:
    """Estimate for .bin/.pt checkpoints: parameters = bytes / dtype size, embeddings from config."""
    files = list(files)
    total = sum(f.bytes for f in files)
    dtype_size = 4 if shape.torch_dtype in ("float32", "float") else 2
    parameters = total // dtype_size
    embedding = 0
    if shape.vocab_size and shape.hidden_size:
        embedding = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    embedding = min(embedding, parameters)
    stats = WeightStats(source="file-size", parameters=parameters)
    stats.embedding.add(embedding, embedding * dtype_size)
    stats.linear.add(parameters - embedding, total - embedding * dtype_size)
    stats.dtype_bytes = {"F32" if dtype_size == 4 else "BF16": total}
    stats.largest_file_bytes = max((f.bytes for f in files), default=0)
    return stats


def _role(path: str) -> FileRole:
    name = posixpath.basename(path)
    if name in _CONFIG_FILES:
        return "config"
    if name.endswith(".index.json"):
        return "index"
    if _TOKENIZER_PATTERNS.match(name):
        return "tokenizer"
    return "other"


def _is_weight(path: str) -> bool:
    return path.endswith((".safetensors", *_TORCH_WEIGHT_EXTENSIONS))


def _always_skipped(path: str) -> bool:
    parts = path.split("/")
    if any(part.startswith(".") for part in parts):
        return True
    if len(parts) > 1 and parts[0] in _SKIPPED_FOLDERS:
        return True
    return path.endswith(_OTHER_WEIGHT_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# Reading from S3.


def _read_json(reader: S3Reader, key: str, size: int) -> dict[str, Any]:
    if size > MAX_JSON_BYTES:
        raise InvalidInput(f"s3://{reader.bucket}/{key} is {size} bytes, too large for a JSON file")
    raw = reader.read_object(key, MAX_JSON_BYTES)
    if raw is None:
        raise ModelNotFound(f"s3://{reader.bucket}/{key} disappeared while planning")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelNotFound(f"s3://{reader.bucket}/{key} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ModelNotFound(f"s3://{reader.bucket}/{key} is not a JSON object")
    return document


def _parallel(items: list[Any], work: Any, workers: int) -> list[Any]:
    if len(items) <= 1 or workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(work, items))


def _sample_order(count: int) -> list[int]:
    """Shards in the order a sample takes them: the first (embed_tokens) and the last (lm_head,
    the final norm), then the rest from the front."""
    if count <= 2:
        return list(range(count))
    return [0, count - 1, *range(1, count - 1)]


def _embeddings(headers: Iterable[SafetensorsHeader]) -> int:
    return sum(1 for h in headers for t in h.tensors if t.name.endswith(_EMBEDDING_SUFFIXES))


def read_weight_stats(
    reader: S3Reader,
    files: list[ObjectInfo],
    shape: ModelShape,
    bits: int | None,
    warnings: list[str],
    *,
    workers: int = DEFAULT_WORKERS,
    budget: int = HEADER_BUDGET_BYTES,
) -> tuple[WeightStats, list[SafetensorsHeader]]:
    """The weights' statistics from their headers: every header when they fit `budget`, else a
    sample (first, last, then in order while the budget lasts, and on until the embeddings the
    config implies are found) and the exact tensor bytes of the rest, split in its proportions."""
    lengths: list[int] = _parallel(files, lambda f: read_header_length(reader, f.key, f.size), workers)
    chosen: list[int] = []
    if sum(lengths) <= budget:
        chosen = list(range(len(files)))
    else:
        used = 0
        for index in _sample_order(len(files)):
            if chosen and used + lengths[index] > budget:
                continue
            chosen.append(index)
            used += lengths[index]
    headers: list[SafetensorsHeader] = _parallel(
        chosen, lambda i: read_header_json(reader, files[i].key, lengths[i], files[i].size), workers
    )
    expected = 1 if shape.tie_word_embeddings or shape.vocab_size is None else 2
    rest = [i for i in _sample_order(len(files)) if i not in chosen]
    while rest and _embeddings(headers) < expected:
        # The sample must hold the embeddings (kept 16-bit, sized apart): read on until it does.
        index = rest.pop(0)
        chosen.append(index)
        headers.append(read_header_json(reader, files[index].key, lengths[index], files[index].size))
    stats = stats_from_headers(headers, bits)
    stats.headers_read, stats.headers_total = len(chosen), len(files)
    stats.largest_file_bytes = max((f.size for f in files), default=0)
    unread = [i for i in range(len(files)) if i not in chosen]
    if unread:
        data = [files[i].size - 8 - lengths[i] for i in unread]
        _extrapolate(
            stats, headers, sum(data), sum(lengths[i] for i in unread), sum(lengths[i] for i in chosen)
        )
        warnings.append(
            f"read the headers of {len(chosen)} of {len(files)} weight files "
            f"({sum(lengths[i] for i in chosen):,} of {sum(lengths):,} header bytes); the other "
            f"{len(unread)} files' {sum(data) / (1 << 30):.1f} GiB of tensors (exact, from their "
            "sizes and header lengths) are split as in the files read"
        )
    return stats, headers


def _extrapolate(
    stats: WeightStats, headers: list[SafetensorsHeader], data_bytes: int, header_bytes: int, read_bytes: int
) -> None:
    """Add `data_bytes` of tensors of unread files to `stats`, in the proportions of the read
    files' non-embedding tensors (the embeddings are all among those read)."""
    groups = {"linear": stats.linear, "other": stats.other, "quantized": stats.quantized}
    sampled = sum(g.stored_bytes for g in groups.values())
    embedding_params = stats.embedding.elements
    dtype_sample: dict[str, int] = {}
    for header in headers:
        for tensor in header.tensors:
            if not tensor.name.endswith(_EMBEDDING_SUFFIXES) or _is_quant_storage(tensor):
                dtype_sample[tensor.dtype] = dtype_sample.get(tensor.dtype, 0) + tensor.nbytes
    if sampled == 0:  # the sample held embeddings only: count the rest as bf16 matrices
        stats.linear.add(data_bytes // 2, data_bytes)
        stats.parameters += data_bytes // 2
        stats.dtype_bytes["BF16"] = stats.dtype_bytes.get("BF16", 0) + data_bytes
        stats.source = "safetensors-sampled"
        return
    params_per_byte = (stats.parameters - embedding_params) / sampled
    extras = {name: data_bytes * g.stored_bytes // sampled for name, g in groups.items()}
    largest = max(groups, key=lambda name: groups[name].stored_bytes)
    extras[largest] += data_bytes - sum(extras.values())  # the rounding: the byte total stays exact
    for name, group in groups.items():
        if extras[name] and group.stored_bytes:
            group.add(round(extras[name] * group.elements / group.stored_bytes), extras[name])
    stats.parameters += round(data_bytes * params_per_byte)
    total_sample = sum(dtype_sample.values())
    for dtype, nbytes in dtype_sample.items():
        stats.dtype_bytes[dtype] = stats.dtype_bytes.get(dtype, 0) + round(data_bytes * nbytes / total_sample)
    stats.tensors += round(header_bytes * stats.tensors / read_bytes) if read_bytes else 0
    stats.source = "safetensors-sampled"


def _select_weights(
    reader: S3Reader,
    objects: dict[str, ObjectInfo],
    model_prefix: str,
    warnings: list[str],
) -> tuple[list[str], WeightFormat, dict[str, Any] | None]:
    """Relative paths of the weight files in use, their format and the index document."""
    top = [p for p in objects if "/" not in p]
    for index_name, fmt in _WEIGHT_INDEXES.items():
        if index_name not in objects:
            continue
        listed = _shards_from_listing(index_name, top, model_prefix)
        if listed:
            return listed, fmt, None  # the index is not read: the listing names the shards
        index = _read_json(reader, objects[index_name].key, objects[index_name].size)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelNotFound(f"{model_prefix}{index_name} has no weight_map")
        shards = sorted({str(v) for v in weight_map.values()})
        missing = [s for s in shards if s not in objects]
        if missing:
            raise ModelNotFound(
                f"{model_prefix}{index_name} names {len(missing)} shard(s) missing from the bucket: "
                + ", ".join(missing[:5])
            )
        return shards, fmt, index
    safetensors = [p for p in top if p.endswith(".safetensors") and not p.startswith("adapter_model.")]
    if len(safetensors) > 1 and any(p.startswith("consolidated") for p in safetensors):
        safetensors = [p for p in safetensors if not p.startswith("consolidated")] or safetensors
    if safetensors:
        return sorted(safetensors), "safetensors", None
    torch_files = [
        p
        for p in top
        if p.endswith(_TORCH_WEIGHT_EXTENSIONS) and not p.startswith(("adapter_model.", "training_args"))
    ]
    if torch_files:
        warnings.append(
            "no safetensors weights: parameters estimated from the sizes of "
            f"{len(torch_files)} .bin/.pt file(s), not from tensor headers"
        )
        return sorted(torch_files), "torch", None
    return [], "safetensors", None


_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<number>[0-9]{5,6})-of-(?P<count>[0-9]{5,6})(?P<ext>\.[a-z]+)$")


def _shards_from_listing(index_name: str, top: list[str], model_prefix: str) -> list[str]:
    """The shards an index `<stem><ext>.index.json` names, from the listing: `<stem>-NNNNN-of-MMMMM<ext>`
    (transformers' save_pretrained names). Every number 1..M must be there; [] when the folder
    names no shards that way (the index is then read)."""
    stem_ext = index_name.removesuffix(".index.json")
    stem, ext = posixpath.splitext(stem_ext)
    shards: dict[int, list[str]] = {}
    counts: set[int] = set()
    for path in top:
        match = _SHARD_NAME.match(path)
        if match is None or match["stem"] != stem or match["ext"] != ext:
            continue
        shards.setdefault(int(match["number"]), []).append(path)
        counts.add(int(match["count"]))
    if not shards:
        return []
    if len(counts) != 1:
        raise ModelNotFound(f"{model_prefix}: shards of {len(counts)} different counts beside {index_name}")
    (count,) = counts
    sample = _SHARD_NAME.match(next(iter(shards.values()))[0])
    assert sample is not None
    digits, total = len(sample["number"]), sample["count"]
    missing = [f"{stem}-{n:0{digits}d}-of-{total}{ext}" for n in range(1, count + 1) if n not in shards]
    if missing:
        raise ModelNotFound(
            f"{model_prefix}{index_name}: {len(missing)} shard(s) missing from the bucket: "
            + ", ".join(missing[:5])
        )
    return sorted(p for paths in shards.values() for p in paths)


def _list_model(reader: S3Reader, model_prefix: str) -> dict[str, ObjectInfo]:
    return {
        obj.key[len(model_prefix) :]: obj
        for obj in reader.list_objects(model_prefix)
        if not obj.key.endswith("/") and obj.key != model_prefix
    }


def _read_one(
    reader: S3Reader, prefix: str, name: str, entry: CatalogEntry | None, workers: int
) -> tuple[Manifest, dict[str, Any] | None]:
    """One folder's manifest (without base/variant), and its adapter_config when it is an adapter."""
    model_prefix = f"{prefix}{name}/"
    source_uri = f"s3://{reader.bucket}/{model_prefix}"
    objects = _list_model(reader, model_prefix)
    if not objects:
        where = "listed in the catalog but " if entry else ""
        raise ModelNotFound(f"model {name!r} is {where}not in the bucket: nothing under {source_uri}")
    warnings: list[str] = []

    adapter_config = (
        _read_json(reader, objects["adapter_config.json"].key, objects["adapter_config.json"].size)
        if "adapter_config.json" in objects
        else None
    )
    config: dict[str, Any] = {}
    if "config.json" in objects:
        config = _read_json(reader, objects["config.json"].key, objects["config.json"].size)
    elif adapter_config is None:
        raise ModelNotFound(f"model {name!r} has no config.json under {source_uri}")
    quantize_config = (
        _read_json(reader, objects["quantize_config.json"].key, objects["quantize_config.json"].size)
        if "quantize_config.json" in objects
        else None
    )
    shape = shape_from_config(config)
    quantization = quantization_from_config(config, quantize_config)

    roles: dict[str, FileRole] = {}
    if adapter_config is not None:
        adapter_weights = [p for p in _ADAPTER_WEIGHT_FILES if p in objects][:1]
        if not adapter_weights:
            raise ModelNotFound(f"adapter {name!r} has no adapter_model.safetensors/.bin under {source_uri}")
        fmt: WeightFormat = "safetensors" if adapter_weights[0].endswith(".safetensors") else "torch"
        weight_paths, index = adapter_weights, None
        for path in weight_paths:
            roles[path] = "adapter_weights"
    else:
        weight_paths, fmt, index = _select_weights(reader, objects, model_prefix, warnings)
        if not weight_paths:
            raise ModelNotFound(f"model {name!r} has no weights (*.safetensors or *.bin) under {source_uri}")
        for path in weight_paths:
            roles[path] = "weights"

    files: list[ManifestFile] = []
    skipped: list[ManifestFile] = []
    for path, obj in sorted(objects.items()):
        role = roles.get(path) or _role(path)
        item = ManifestFile(key=obj.key, path=path, bytes=obj.size, role=role)
        unused_weight = path not in roles and _is_weight(path)
        unused_index = path in _WEIGHT_INDEXES and _WEIGHT_INDEXES[path] != fmt
        if _always_skipped(path) or unused_weight or unused_index:
            skipped.append(item)
        else:
            files.append(item)
    if skipped:
        skipped_bytes = sum(f.bytes for f in skipped)
        warnings.append(
            f"not syncing {len(skipped)} file(s) the runtime does not load "
            f"({skipped_bytes / (1 << 30):.1f} GiB): "
            + ", ".join(f.path for f in skipped[:4])
            + (" ..." if len(skipped) > 4 else "")
        )

    weight_objects = [objects[p] for p in weight_paths]
    if fmt == "safetensors":
        bits = quantization.bits if quantization else None
        stats, headers = read_weight_stats(reader, weight_objects, shape, bits, warnings, workers=workers)
        if index is not None and stats.source == "safetensors-header":
            _check_index(index, headers, model_prefix, warnings)
    else:
        stats = stats_from_file_sizes([f for f in files if f.path in roles], shape)

    manifest = Manifest(
        name=name,
        bucket=reader.bucket,
        prefix=model_prefix,
        source_uri=source_uri,
        files=files,
        skipped=skipped,
        shape=shape,
        weights=stats,
        quantization=quantization,
        catalog=entry,
        warnings=warnings,
    )
    return manifest, adapter_config


def _check_index(
    index: Mapping[str, Any], headers: list[SafetensorsHeader], model_prefix: str, warnings: list[str]
) -> None:
    weight_map = index.get("weight_map") or {}
    names = {t.name for h in headers for t in h.tensors}
    missing = [n for n in weight_map if n not in names]
    if missing:
        raise ModelNotFound(
            f"{model_prefix}: {len(missing)} tensor(s) of the index are in no shard header, e.g. {missing[0]}"
        )
    total = (index.get("metadata") or {}).get("total_size")
    data = sum(h.data_bytes for h in headers)
    if isinstance(total, int) and total != data:
        warnings.append(f"index metadata total_size {total} differs from the shards' {data} tensor bytes")


def _base_candidates(entry: CatalogEntry | None, adapter_config: Mapping[str, Any]) -> list[str]:
    raw: list[str] = []
    if entry is not None and entry.base_model:
        raw.append(entry.base_model)
    declared = adapter_config.get("base_model_name_or_path")
    if isinstance(declared, str) and declared:
        declared = declared.rstrip("/")
        tail = declared.split("/")[-1]
        raw += [declared, tail, tail.lower(), declared.replace("/", "--"), declared.replace("/", "_")]
    candidates: list[str] = []
    for name in raw:
        try:
            check_model_name(name)
        except ValueError:
            continue
        if name not in candidates:
            candidates.append(name)
    return candidates


def read_manifest(
    reader: S3Reader,
    prefix: str,
    model: str,
    catalog: Catalog,
    *,
    workers: int = DEFAULT_WORKERS,
    prefer_awq_variant: bool = True,
) -> Manifest:
    """The manifest of `model` under `prefix` ("" or ending in "/"), with its base and AWQ variant."""
    check_model_name(model)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    entry = catalog.get(model)
    manifest, adapter_config = _read_one(reader, prefix, model, entry, workers)

    if adapter_config is not None:
        candidates = _base_candidates(entry, adapter_config)
        base_name = next(
            (c for c in candidates if c != model and reader.prefix_exists(f"{prefix}{c}/")), None
        )
        if base_name is None:
            raise ModelNotFound(
                f"adapter {model!r}: base model "
                f"{adapter_config.get('base_model_name_or_path')!r} is not in s3://{reader.bucket}/{prefix} "
                f"(tried {', '.join(candidates) or 'nothing'}); set base_model for it in the catalog"
            )
        base, base_adapter = _read_one(reader, prefix, base_name, catalog.get(base_name), workers)
        if base_adapter is not None:
            raise InvalidInput(f"adapter {model!r}: its base {base_name!r} is itself an adapter")
        target = adapter_config.get("target_modules")
        manifest.adapter = AdapterInfo(
            peft_type=str(adapter_config.get("peft_type")) if adapter_config.get("peft_type") else None,
            base_model_name_or_path=str(adapter_config.get("base_model_name_or_path") or "") or None,
            base_model=base_name,
            r=adapter_config.get("r") if isinstance(adapter_config.get("r"), int) else None,
            target_modules=[str(t) for t in target] if isinstance(target, list) else [],
        )
        manifest.base = base
        manifest.shape = base.shape
        manifest.quantization = base.quantization  # a LoRA over a pre-quantized base loads it as stored
        return manifest

    if manifest.quantization is None and prefer_awq_variant:
        manifest.awq_variant = _find_awq_variant(reader, prefix, model, entry, catalog, workers, manifest)
    return manifest


def _find_awq_variant(
    reader: S3Reader,
    prefix: str,
    model: str,
    entry: CatalogEntry | None,
    catalog: Catalog,
    workers: int,
    manifest: Manifest,
) -> Manifest | None:
    if entry is not None and entry.awq_variant:
        candidates = [entry.awq_variant]
    else:
        candidates = [f"{model}-awq", f"{model}-AWQ"]
    for candidate in candidates:
        try:
            check_model_name(candidate)
        except ValueError:
            continue
        if not reader.prefix_exists(f"{prefix}{candidate}/"):
            continue
        try:
            variant, adapter_config = _read_one(reader, prefix, candidate, catalog.get(candidate), workers)
        except ModelNotFound as error:
            manifest.warnings.append(f"AWQ variant {candidate!r} ignored: {error}")
            continue
        if adapter_config is not None or variant.quantization is None or variant.quantization.kind != "awq":
            manifest.warnings.append(
                f"folder {candidate!r} ignored as AWQ variant: it is not an AWQ checkpoint"
            )
            continue
        return variant
    return None
