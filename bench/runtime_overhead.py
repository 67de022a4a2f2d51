"""What the HTTP service costs over calling generate() directly, measured in the same run.

    .venv/bin/python -m bench.runtime_overhead [--model smollm2|tiny] [--tokens 128] [--threads 2]

Loads the model in this process (the baseline: the runtime's own loader, then a bare
``model.generate``) and starts ``python -m instance_runtime`` on a free port with the same
dtype and thread count. Runs alternate between the two so that load from other processes on
the machine hits both alike. Prints tokens/s of each, their ratio (goal >= 0.9), and /health
p50/p99 while a long generation runs. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch

from instance_runtime.engine import Engine
from instance_runtime.settings import RuntimeSettings
from local.models import build_tiny_model, convert_smollm2

REPO_ROOT = Path(__file__).resolve().parents[1]

PROMPT = "Write a short paragraph about why health checks must answer quickly, even under load."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def model_folder(name: str) -> Path:
    if name == "smollm2":
        return convert_smollm2(REPO_ROOT / "build" / "models" / "smollm2-135m-instruct")
    return build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny-llama")


def start_server(
    model: Path,
    port: int,
    settings: dict[str, str],
    *,
    python: str = sys.executable,
    timeout_s: float = 180.0,
) -> subprocess.Popen[bytes]:
    """The runtime as its own process on `model` with these runtime settings, once healthy."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "ENV_FILE"},
        "MODEL_PATH": str(model),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        "PYTHONPATH": str(REPO_ROOT),
        **settings,
    }
    process = subprocess.Popen([python, "-m", "instance_runtime"], cwd=REPO_ROOT, env=env)
    deadline = time.monotonic() + timeout_s
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


def direct_tokens_per_s(engine: Engine, prompt_ids: list[int], tokens: int) -> float:
    input_ids = torch.tensor([prompt_ids], device=engine.model.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            top_k=None,
            pad_token_id=engine.pad_token_id,
        )
    elapsed = time.perf_counter() - started
    return (out.shape[1] - input_ids.shape[1]) / elapsed


def http_tokens_per_s(http: httpx.Client, tokens: int) -> float:
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    started = time.perf_counter()
    response = http.post("/generate", json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"]) / elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def health_under_load(url: str, probes: int) -> dict[str, float]:
    """Poll /health while one long generation keeps the worker busy."""
    done = threading.Event()

    def long_generation() -> None:
        body = {"prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True, "stream": True}
        with (
            httpx.Client(base_url=url, timeout=600) as http,
            http.stream("POST", "/v1/completions", json=body) as r,
        ):
            for _ in r.iter_lines():
                if done.is_set():
                    return

    thread = threading.Thread(target=long_generation, daemon=True)
    thread.start()
    time.sleep(1.0)  # let the generation get going
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=10) as http:
        http.get("/health")
        for _ in range(probes):
            started = time.perf_counter()
            http.get("/health").raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)
    done.set()
    thread.join(60)
    return {"p50_ms": round(percentile(latencies, 0.5), 2), "p99_ms": round(percentile(latencies, 0.99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    # One thread: on a small shared machine, two intra-op threads fight and halve throughput.
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the service")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--health-probes", type=int, default=300)
    args = parser.parse_args()

    folder = model_folder(args.model)
    torch.set_num_threads(args.threads)
    engine = Engine.load(
        RuntimeSettings(model_path=folder, dtype=args.dtype, torch_threads=args.threads, _env_file=None)  # type: ignore[call-arg]
    )
    prompt_ids = engine.encode(PROMPT)
    port = free_port()
    server = start_server(
        folder, port, {"TORCH_THREADS": str(args.threads), "DTYPE": args.dtype, "MAX_NEW_TOKENS": "4096"}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            # Warm both paths once (first-call allocations, lazy imports).
            direct_tokens_per_s(engine, prompt_ids, 8)
            http_tokens_per_s(http, 8)
            direct: list[float] = []
            served: list[float] = []
            for _ in range(args.repeats):
                direct.append(direct_tokens_per_s(engine, prompt_ids, args.tokens))
                served.append(http_tokens_per_s(http, args.tokens))
        idle = health_idle(url, 100)
        loaded = health_under_load(url, args.health_probes)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    direct_tps, served_tps = statistics.median(direct), statistics.median(served)
    ratio = served_tps / direct_tps
    print(
        f"model {args.model} ({folder}), {args.tokens} tokens/run, {args.threads} threads, dtype {args.dtype}"
    )
    print(f"direct model.generate : {direct_tps:8.1f} tokens/s  runs {[round(x, 1) for x in direct]}")
    print(f"HTTP /generate        : {served_tps:8.1f} tokens/s  runs {[round(x, 1) for x in served]}")
    print(f"ratio HTTP/direct     : {ratio:8.3f}  (goal >= 0.9) {'OK' if ratio >= 0.9 else 'BELOW GOAL'}")
    print(f"/health idle          : p50 {idle['p50_ms']} ms, p99 {idle['p99_ms']} ms")
    print(f"/health under load    : p50 {loaded['p50_ms']} ms, p99 {loaded['p99_ms']} ms")
    summary: dict[str, Any] = {
        "model": args.model,
        "tokens": args.tokens,
        "threads": args.threads,
        "dtype": args.dtype,
        "direct_tokens_per_s": round(direct_tps, 2),
        "http_tokens_per_s": round(served_tps, 2),
        "ratio": round(ratio, 3),
        "health_idle": idle,
        "health_under_load": loaded,
    }
    print(json.dumps(summary))


def health_idle(url: str, probes: int) -> dict[str, float]:
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=10) as http:
        http.get("/health")
        for _ in range(probes):
            started = time.perf_counter()
            http.get("/health").raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(latencies, 0.5), 2), "p99_ms": round(percentile(latencies, 0.99), 2)}


if __name__ == "__main__":
    main()
