"""How fast the sync document brings a model onto the instance, against the alternatives.

A ~2 GB synthetic model folder (500 MB shards of real bytes plus the json files a Hugging Face
checkpoint carries) is served by `rclone serve s3` on 127.0.0.1. The same bytes are then
fetched four ways, each into an empty folder, each timed until the data is on disk (the timing
ends with `sync`), best of --rounds:

* the sync SSM document (s5cmd), sent through moto's SSM to the sandbox agent, timed from
  SendCommand to Success as the state machine would see it (listing and size checks included);
* `aws s3 sync` (the aws CLI of this venv);
* boto3's download_file (s3transfer, default TransferConfig), files in parallel;
* the local copy limit: `cp -r` of the served folder itself.

It prints each rate and its ratio to the best of the three baselines; the goal is the document
at >= 0.8x of it. (The document flushes as it downloads, so its success means "on disk"; on a
2-core machine shared with other work, rclone, s5cmd and the flush compete for the same CPUs.)
Then the document runs again on the unchanged folder, which must move 0 bytes.
Everything it writes lives in one temporary folder, removed at the end.

    .venv/bin/python -m bench.sync_throughput [--size-mb 2000] [--shard-mb 500] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

from local.sandbox import Sandbox, free_port, register_documents, run_document
from local.sparse_models import (
    RCLONE_ACCESS_KEY,
    RCLONE_SECRET_KEY,
    start_rclone_s3,
    stop_rclone_s3,
)
from tests.fixtures import launch_instance

ROOT = Path(__file__).resolve().parents[1]

BUCKET = "asoba-llm-cache"
MODEL = "synthetic-2g"
REGION = "us-west-2"
MB = 1_000_000
BLOCK = 4 * 1024 * 1024


def write_model(folder: Path, size_mb: int, shard_mb: int) -> int:
    """Shards of random bytes (one random block repeated: incompressible enough, fast to write)."""
    folder.mkdir(parents=True)
    block = os.urandom(BLOCK)
    shards = max(1, round(size_mb / shard_mb))
    total = 0
    weight_map = {}
    for index in range(1, shards + 1):
        name = f"model-{index:05d}-of-{shards:05d}.safetensors"
        remaining = shard_mb * MB
        with open(folder / name, "wb") as handle:
            while remaining > 0:
                chunk = block[: min(BLOCK, remaining)]
                handle.write(chunk)
                remaining -= len(chunk)
        total += shard_mb * MB
        weight_map[f"model.layers.{index}.weight"] = name
    extras = {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}),
        "generation_config.json": json.dumps({"max_new_tokens": 512}),
        "model.safetensors.index.json": json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}
        ),
        "tokenizer.json": json.dumps({"model": {"vocab": {f"t{i}": i for i in range(60_000)}}}),
        "tokenizer_config.json": json.dumps({"model_max_length": 4096}),
    }
    for name, text in extras.items():
        (folder / name).write_text(text)
        total += len(text.encode())
    return total


def flush() -> float:
    started = time.monotonic()
    subprocess.run(["sync"], check=True)
    return time.monotonic() - started


def timed(action: Callable[[], None]) -> float:
    """Seconds until the action is done and its data is on disk."""
    flush()
    started = time.monotonic()
    action()
    subprocess.run(["sync"], check=True)
    return time.monotonic() - started


def tool_env(endpoint: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": RCLONE_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": RCLONE_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
    )
    return env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=2000)
    parser.add_argument("--shard-mb", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where the temporary folder goes (default: $TMPDIR)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sync-throughput-", dir=args.workdir))
    rclone = moto = sandbox = None
    try:
        served = work / "served"
        source = served / BUCKET / "models" / MODEL
        total = write_model(source, args.size_mb, args.shard_mb)
        files = sorted(p for p in source.rglob("*") if p.is_file())
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # same cache for all
        rclone = start_rclone_s3(served)
        endpoint = rclone.endpoint
        s3 = rclone.client()
        uri = f"s3://{BUCKET}/models/{MODEL}/"

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        moto_port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
        moto.start()
        credentials = {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "region_name": REGION,
        }
        moto_url = f"http://127.0.0.1:{moto_port}"
        ssm = boto3.client("ssm", endpoint_url=moto_url, **credentials)
        ec2 = boto3.client("ec2", endpoint_url=moto_url, **credentials)
        register_documents(ssm, ["sync"])
        sandbox = Sandbox(
            work / "instance",
            launch_instance(ec2),
            endpoint_url=endpoint,
            extra_env={
                "AWS_ACCESS_KEY_ID": RCLONE_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": RCLONE_SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1",
            },
        )
        synced = sandbox.models_root / MODEL
        report: dict[str, object] = {}

        def document() -> None:
            run = run_document(
                ssm, sandbox, "sync", wait_s=3600, ModelName=MODEL, SourceUri=uri, Tool="s5cmd"
            )
            if run.status != "Success" or run.result is None:
                raise RuntimeError(run.explain())
            report.update(run.result)

        def aws_cli() -> None:
            subprocess.run(
                ["aws", "s3", "sync", uri, str(work / "aws"), "--no-progress", "--only-show-errors"],
                env=tool_env(endpoint),
                check=True,
            )

        def boto3_download() -> None:
            keys = [
                (o["Key"], o["Size"])
                for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"models/{MODEL}/")["Contents"]
            ]
            target = work / "boto3"

            def one(key: str) -> None:
                dest = target / key.rsplit("/", 1)[1]
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(BUCKET, key, str(dest))

            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(one, [key for key, _ in keys]))

        def local_copy() -> None:
            subprocess.run(["cp", "-r", str(source), str(work / "cp")], check=True)

        ways: dict[str, tuple[Callable[[], None], Path]] = {
            "sync document (s5cmd, via SSM + sandbox agent)": (document, synced),
            "aws s3 sync": (aws_cli, work / "aws"),
            "boto3 download_file, 8 files at a time": (boto3_download, work / "boto3"),
            "cp -r (local copy limit)": (local_copy, work / "cp"),
        }
        best: dict[str, float] = {}
        tool_seconds: list[float] = []
        for round_index in range(args.rounds):
            for name, (action, dest) in ways.items():
                shutil.rmtree(dest, ignore_errors=True)
                flush()
                seconds = timed(action)
                best[name] = min(best.get(name, float("inf")), seconds)
                if action is document:
                    tool_seconds.append(float(report["seconds"]))  # type: ignore[arg-type]
                print(f"  round {round_index + 1}: {name}: {seconds:.2f} s", flush=True)
                if action is not document:
                    shutil.rmtree(dest, ignore_errors=True)

        # The synced folder is the last round's: syncing it again must move nothing.
        started = time.monotonic()
        document()
        resync_seconds = time.monotonic() - started
        resync_bytes = int(report["bytes_transferred"])  # type: ignore[call-overload]

        rates = {name: total / seconds for name, seconds in best.items()}
        baselines = [name for name in ways if not name.startswith("sync")]
        reference = max(rates[name] for name in baselines)
        doc_name = next(iter(ways))
        print()
        print(
            f"data: {total / MB:,.0f} MB in {len(files)} files ({args.size_mb // args.shard_mb} shards of "
            f'{args.shard_mb} MB), rclone serve s3 on 127.0.0.1 (--etag-hash "": no hashing on listings)'
        )
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(
            f"each time runs until the data is on disk (ends with `sync`); best of {args.rounds} rounds; "
            f"{os.cpu_count()} CPUs, load average {load}"
        )
        for name in ways:
            marker = "  <- best baseline" if rates[name] == reference and name in baselines else ""
            print(
                f"{name:<56} {rates[name] / 1e9:6.2f} GB/s  {best[name]:6.2f} s  "
                f"{rates[name] / reference:5.2f}x{marker}"
            )
        print(
            f"{'  (its s5cmd run + final flush, as the document reports)':<56} "
            f"{total / min(tool_seconds) / 1e9:6.2f} GB/s  {min(tool_seconds):6.2f} s"
        )
        ratio = rates[doc_name] / reference
        print(
            f"re-sync of the unchanged folder: {resync_bytes} bytes transferred in {resync_seconds:.2f} s "
            f"(end to end through SSM)"
        )
        verdict_rate = "met" if ratio >= 0.8 else "NOT met"
        verdict_resync = "met" if resync_bytes == 0 else "NOT met"
        print(
            f"goal: document >= 0.8x best baseline: {ratio:.2f}x, {verdict_rate}; "
            f"re-sync moves 0 bytes: {verdict_resync}"
        )
        # The rate depends on the machine and its load; moving bytes for an unchanged folder is a bug.
        return 0 if resync_bytes == 0 else 1
    finally:
        if sandbox is not None:
            sandbox.close()
        if rclone is not None:
            stop_rclone_s3(rclone)
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
