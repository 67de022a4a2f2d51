"""Serving throughput through HTTP at several concurrencies, beside raw transformers generate().

    .venv/bin/python -m bench.serving_throughput [--model smollm2|tiny] [--tokens 64] [--threads 2]
        [--concurrency 1,4,8,16] [--rounds 2] [--max-batch-size 16]

Baselines in this process (the runtime's own loader, then a bare ``model.generate`` at batch 1
and on a left-padded batch of 8 prompts of different lengths), best of a run before and one
after the service's. The service is ``python -m instance_runtime`` on a free port; at each
concurrency that many clients each send ``--rounds`` /v1/completions requests of exactly
``--tokens`` tokens (ignore_eos), while a thread polls /health. Prints aggregate tokens/s,
request latency p50/p99, ratios to the baselines, /health p99 under load; the last line is a
JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch

from bench.runtime_overhead import free_port, model_folder
from instance_runtime.engine import Engine
from instance_runtime.settings import RuntimeSettings

REPO_ROOT = Path(__file__).resolve().parents[1]

# Different lengths, so the batch of 8 is really padded.
PROMPTS = [
    "Write a short paragraph about why health checks must answer quickly.",
    "Explain continuous batching.",
    "List three reasons to quantize a large language model before serving it on a small GPU.",
    "What is a KV cache?",
    "Describe, in a few sentences, how a load balancer decides that an instance is unhealthy.",
    "Summarize the plot of a story about a fox.",
    "Why do GPUs serve many requests at once faster than one at a time?",
    "Give advice to a new on-call engineer.",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def raw_generate(engine: Engine, batch: int, tokens: int, repeats: int) -> float:
    """tokens/s of bare generate() on ``batch`` left-padded prompts (best of ``repeats``)."""
    tokenizer = engine.tokenizer
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = engine.pad_token_id
    inputs = tokenizer(PROMPTS[:batch], return_tensors="pt", padding=True).to(engine.model.device)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            out = engine.model.generate(  # type: ignore[operator]
                **inputs,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                top_k=None,
                pad_token_id=engine.pad_token_id,
            )
        elapsed = time.perf_counter() - started
        generated = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
        best = max(best, generated / elapsed)
    return best


def start_server(model: Path, port: int, threads: int, max_batch_size: int) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "ENV_FILE"},
        "MODEL_PATH": str(model),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "TORCH_THREADS": str(threads),
        "DTYPE": "float32",
        "MAX_BATCH_SIZE": str(max_batch_size),
        "QUEUE_SIZE": str(max_batch_size),
        "LOG_LEVEL": "warning",
        "PYTHONPATH": str(REPO_ROOT),
    }
    process = subprocess.Popen([sys.executable, "-m", "instance_runtime"], cwd=REPO_ROOT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
            if status["status"] == "healthy":
                return process
            if status["status"] == "error":
                raise SystemExit(f"runtime failed to load: {status.get('error')}")
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("runtime did not become healthy")


def http_level(url: str, concurrency: int, rounds: int, tokens: int) -> dict[str, Any]:
    """``concurrency`` clients, each sending ``rounds`` requests back to back."""
    latencies: list[float] = []
    completion_tokens = 0
    errors: list[str] = []
    lock = threading.Lock()
    health: list[float] = []
    stop = threading.Event()

    def client(index: int) -> None:
        nonlocal completion_tokens
        with httpx.Client(base_url=url, timeout=600) as http:
            for r in range(rounds):
                body = {
                    "prompt": PROMPTS[(index + r) % len(PROMPTS)],
                    "max_tokens": tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                }
                started = time.perf_counter()
                response = http.post("/v1/completions", json=body)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    latencies.append(elapsed)
                    completion_tokens += response.json()["usage"]["completion_tokens"]

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            http.get("/health")
            while not stop.is_set():
                started = time.perf_counter()
                http.get("/health")
                health.append(time.perf_counter() - started)
                time.sleep(0.02)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    stop.set()
    prober.join(10)
    if errors:
        raise SystemExit(f"c{concurrency}: {len(errors)} failed requests, e.g. {errors[0]}")
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "tokens_per_s": round(completion_tokens / wall, 1),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p99_s": round(percentile(latencies, 0.99), 2),
        "health_p50_ms": round(statistics.median(health) * 1000, 1) if health else None,
        "health_p99_ms": round(percentile(health, 0.99) * 1000, 1) if health else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--max-batch-size", type=int, default=16)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    torch.set_num_threads(args.threads)
    folder = model_folder(args.model)
    engine = Engine.load(RuntimeSettings(model_path=folder, dtype="float32", torch_threads=args.threads))
    raw_generate(engine, 1, 8, 1)  # warm-up
    raw = {1: 0.0, 8: 0.0}

    def measure_raw() -> None:
        # Best of a run before and one after the HTTP levels: other work on the machine (shared
        # cores) then hits the baselines no harder than the service.
        raw[1] = max(raw[1], raw_generate(engine, 1, args.tokens, 1))
        raw[8] = max(raw[8], raw_generate(engine, 8, args.tokens, 1))

    measure_raw()
    port = free_port()
    server = start_server(folder, port, args.threads, args.max_batch_size)
    url = f"http://127.0.0.1:{port}"
    try:
        http_level(url, 1, 1, 8)  # warm-up
        results = []
        for level in levels:
            # One client at c1 needs more rounds for a stable figure.
            results.append(http_level(url, level, max(args.rounds, 4 // level), args.tokens))
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    measure_raw()
    engine.close()
    print(f"raw generate batch 1       : {raw[1]:8.1f} tokens/s")
    print(f"raw generate padded batch 8: {raw[8]:8.1f} tokens/s")
    for result in results:
        print(
            f"HTTP c{result['concurrency']:<3}: {result['tokens_per_s']:7.1f} tokens/s  latency p50 "
            f"{result['latency_p50_s']:.2f} s p99 {result['latency_p99_s']:.2f} s  "
            f"/health p99 {result['health_p99_ms']} ms  "
            f"vs raw b1 {result['tokens_per_s'] / raw[1]:.2f}x  "
            f"vs raw b8 {result['tokens_per_s'] / raw[8]:.2f}x"
        )
    peak = next(
        (
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("asoba_inference_batch_size_peak")
        ),
        None,
    )
    summary = {
        "model": args.model,
        "tokens": args.tokens,
        "threads": args.threads,
        "max_batch_size": args.max_batch_size,
        "raw_generate_tokens_per_s": {"batch1": round(raw[1], 1), "batch8_padded": round(raw[8], 1)},
        "http": results,
        "peak_batch_size": peak,
        "ratio_c1_vs_raw_b1": round(results[0]["tokens_per_s"] / raw[1], 2),
        "ratio_best_vs_raw_b8": round(max(r["tokens_per_s"] for r in results) / raw[8], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
