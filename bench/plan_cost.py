"""What planning costs in S3 reads: bytes and latency for synthetic sharded models, 1 to 64 GiB,
and the seed's models (the 16-shard MoE qwen3-coder-30b among them: 2.3 MB of headers and a
1.6 MB index, of which the planner reads a sample and neither whole).

Each model is a 32-layer Llama-shaped bf16 checkpoint whose width grows with its size, saved
as Hugging Face does (5 GB shards + model.safetensors.index.json) as sparse files, served by
`rclone serve s3 --etag-hash ""`. For each, the manifest is read and planned through a
`CountingReader` wrapped around the real S3 reader: bytes are counted, not guessed. The
baseline measured in the same run is the naive approach, downloading the weights (bytes =
model size), and the smallest model's read (flatness ratio).

    .venv/bin/python -m bench.plan_cost [--runs 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from asoba_deploy.core.catalog import builtin_catalog
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.manifest import read_manifest
from asoba_deploy.core.planner import plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.s3 import BotoS3Reader, CountingReader
from local.sparse_models import (
    SEED_MODELS,
    decoder_tensors,
    start_rclone_s3,
    stop_rclone_s3,
    write_model,
    write_seed_model,
)
from tests.unit.planner_support import seed_snapshot

ROOT = Path(__file__).resolve().parents[1]

GIB = 1 << 30
SIZES_GIB = (1, 2, 4, 8, 16, 32, 64)
SHARD_BYTES = 5_000_000_000  # transformers' default max_shard_size "5GB"
BUDGET_BYTES = 1_000_000
BUCKET = "bench"


def synthetic_config(target_bytes: int) -> dict[str, object]:
    """A 32-layer bf16 Llama whose hidden size (a multiple of 128) brings it nearest to the target."""
    best: dict[str, object] = {}
    best_gap = math.inf
    for hidden in range(512, 16384 + 1, 128):
        heads = hidden // 128
        config: dict[str, object] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": round(3.5 * hidden / 128) * 128,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 4),
            "head_dim": 128,
            "num_hidden_layers": 32,
            "vocab_size": 32000,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        }
        size = sum(t.nbytes for t in decoder_tensors(config))
        if abs(size - target_bytes) < best_gap:
            best, best_gap = config, abs(size - target_bytes)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model (median reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="plan-cost-") as tmp:
        root = Path(tmp)
        models: dict[str, int] = {}
        for size in SIZES_GIB:
            config = synthetic_config(size * GIB)
            tensors = decoder_tensors(config)
            total = sum(t.nbytes for t in tensors)
            shards = max(1, math.ceil(total / SHARD_BYTES))
            name = f"synthetic-{size}g"
            write_model(root / BUCKET / name, config, tensors, shards=shards)
            models[name] = shards
        for name, seed in SEED_MODELS.items():
            write_seed_model(root / BUCKET, name)
            models[name] = seed.shards
        server = start_rclone_s3(root)
        try:
            client = server.client()
            snapshot = seed_snapshot()
            policy = Policy()
            rows = []
            warm = CountingReader(BotoS3Reader(client, BUCKET))  # connections, imports: not measured
            plan(
                read_manifest(warm, "", next(iter(models)), builtin_catalog()),
                snapshot,
                DeployRequest(model=next(iter(models))),
                policy,
            )
            for name, shards in models.items():
                latencies = []
                reader = CountingReader(BotoS3Reader(client, BUCKET))
                result = None
                for _ in range(args.runs):
                    reader = CountingReader(BotoS3Reader(client, BUCKET))
                    started = time.perf_counter()
                    manifest = read_manifest(reader, "", name, builtin_catalog())
                    result = plan(manifest, snapshot, DeployRequest(model=name), policy)
                    latencies.append(time.perf_counter() - started)
                assert result is not None
                rows.append(
                    (
                        name,
                        result.total_bytes,
                        shards,
                        manifest.weights.tensors,
                        reader.bytes_read,
                        reader.gets,
                        reader.lists,
                        statistics.median(latencies),
                        result.quantization,
                    )
                )
        finally:
            stop_rclone_s3(server)

    print(
        f"{'model':<24}{'size GiB':>9}{'shards':>7}{'tensors':>8}{'bytes read':>12}{'GETs':>6}"
        f"{'LISTs':>6}{'read/size':>11}{'vs 1 GiB':>9}{'latency ms':>11}  plan"
    )
    first_read = rows[0][4]
    for name, size, shards, count, read, gets, lists, latency, quant in rows:
        print(
            f"{name:<24}{size / GIB:>9.1f}{shards:>7}{count:>8}{read:>12,}{gets:>6}{lists:>6}"
            f"{read / size:>11.1e}{read / first_read:>9.2f}{latency * 1000:>11.1f}  {quant}"
        )
    synthetic = rows[: len(SIZES_GIB)]
    largest, smallest = synthetic[-1], synthetic[0]
    print(
        f"\nsize grew {largest[1] / smallest[1]:.0f}x, bytes read grew {largest[4] / smallest[4]:.2f}x, "
        f"latency grew {largest[7] / smallest[7]:.2f}x; "
        f"largest read {largest[4]:,} B = 1/{largest[1] / largest[4]:,.0f} of downloading the weights"
    )
    over = [row[0] for row in rows if row[4] >= BUDGET_BYTES]
    if over:
        print(f"FAIL: {', '.join(over)} read 1 MB or more")
        return 1
    print(f"OK: every plan read under {BUDGET_BYTES:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
