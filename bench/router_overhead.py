"""What the stable-endpoint router costs over calling the backend directly, measured in the same run.

    .venv/bin/python -m bench.router_overhead [--requests 500] [--rounds 3]

Starts a small uvicorn backend (this module's ``app``: a fixed JSON answer, so the HTTP path is
all that is measured) and ``python -m instance_runtime.router`` in front of it. Rounds alternate
between direct and routed requests from one keep-alive client, so load from other processes hits
both alike. Prints requests/s and p50 latency of each and their ratios; the last line is a JSON
summary.
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
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
UVICORN = [sys.executable, "-m", "uvicorn", "--lifespan", "off"]
ANSWER = json.dumps({"object": "text_completion", "text": "x" * 256}).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The backend: drains the request and answers a fixed body."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": ANSWER})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


def measure(url: str, requests: int) -> tuple[float, float]:
    """Requests/s and p50 latency (ms) of ``requests`` sequential keep-alive POSTs."""
    latencies: list[float] = []
    with httpx.Client(timeout=10) as client:
        client.post(url, json={"prompt": "warm"})
        started = time.perf_counter()
        for _ in range(requests):
            t0 = time.perf_counter()
            client.post(url, json={"prompt": "hello"}).raise_for_status()
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    return requests / elapsed, statistics.median(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    backend_port, router_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "router.json"
        config.write_text(
            json.dumps(
                {
                    "backend": {"port": backend_port, "model": "bench", "unit": "bench.service"},
                    "generation": 1,
                }
            )
        )
        backend = subprocess.Popen(
            [*UVICORN, "bench.router_overhead:app", "--port", str(backend_port), "--log-level", "warning"],
            cwd=REPO_ROOT,
            env=env,
        )
        router = subprocess.Popen(
            [sys.executable, "-m", "instance_runtime.router"],
            cwd=REPO_ROOT,
            env={
                **env,
                "ROUTER_HOST": "127.0.0.1",
                "ROUTER_PORT": str(router_port),
                "ROUTER_CONFIG": str(config),
            },
            stderr=subprocess.DEVNULL,
        )
        try:
            direct_url = f"http://127.0.0.1:{backend_port}/v1/completions"
            routed_url = f"http://127.0.0.1:{router_port}/v1/completions"
            wait_up(direct_url)
            wait_up(routed_url)
            direct: list[tuple[float, float]] = []
            routed: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                direct.append(measure(direct_url, args.requests))
                routed.append(measure(routed_url, args.requests))
        finally:
            for process in (router, backend):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=40)

    summary = {
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "direct_rps": statistics.median(r for r, _ in direct),
        "routed_rps": statistics.median(r for r, _ in routed),
        "direct_p50_ms": statistics.median(p for _, p in direct),
        "routed_p50_ms": statistics.median(p for _, p in routed),
    }
    summary["rps_ratio"] = summary["routed_rps"] / summary["direct_rps"]
    summary["p50_ratio"] = summary["routed_p50_ms"] / summary["direct_p50_ms"]
    print(f"direct: {summary['direct_rps']:.0f} req/s, p50 {summary['direct_p50_ms']:.2f} ms")
    print(f"routed: {summary['routed_rps']:.0f} req/s, p50 {summary['routed_p50_ms']:.2f} ms")
    print(
        f"ratio routed/direct: throughput {summary['rps_ratio']:.2f}, p50 latency {summary['p50_ratio']:.2f}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
