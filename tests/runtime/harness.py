"""The runtime under test as a real process, and helpers to load it: shared by the fixtures in
conftest.py and by the tests that need the classes or the main server's limits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = Path(os.environ.get("ASOBA_MODEL_CACHE", REPO_ROOT / "build" / "models"))

# The main server's limits; tests derive their bad requests from these.
MAIN_CONTEXT = 4096
MAIN_MAX_NEW_TOKENS = 4000
MAIN_QUEUE_SIZE = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StartupObservation:
    """What the service said the first time /health answered."""

    seconds_to_first_health: float
    status_code: int
    status_body: dict[str, Any]


@dataclass
class RuntimeServer:
    """``python -m instance_runtime`` in a subprocess, configured only through its environment."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    startup: StartupObservation | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RuntimeServer:
        env = {k: v for k, v in os.environ.items() if k != "ENV_FILE"}
        env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "TORCH_THREADS": "1",
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "LOG_LEVEL": "info",
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        env.update(self.env)
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "instance_runtime"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = started + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"runtime exited with {self.process.returncode}:\n{self.log()}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if health.status_code == 200:
                seconds = time.monotonic() - started
                status = httpx.get(f"{self.url}/status", timeout=5)
                self.startup = StartupObservation(seconds, status.status_code, status.json())
                return self
        raise AssertionError(f"runtime never answered /health:\n{self.log()}")

    def wait_status(self, expected: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = httpx.get(f"{self.url}/status", timeout=5).json()
            if body["status"] == expected:
                return body
            if body["status"] == "error" and expected != "error":
                raise AssertionError(f"model failed to load: {body.get('error')}\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"status never became {expected!r} (last: {body}):\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


class BackgroundStream:
    """A streaming request read in a thread: it keeps the generation worker busy until closed."""

    def __init__(self, url: str, path: str, body: dict[str, Any]) -> None:
        self.first_chunk = threading.Event()
        self.done = threading.Event()
        self.chunks: list[str] = []
        self.status_code: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, path, body), daemon=True)
        self._thread.start()

    def _run(self, url: str, path: str, body: dict[str, Any]) -> None:
        try:
            with (
                httpx.Client(base_url=url, timeout=120) as http,
                http.stream("POST", path, json={**body, "stream": True}) as response,
            ):
                self.status_code = response.status_code
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.chunks.append(line[6:])
                        self.first_chunk.set()
                    if self._stop.is_set():
                        return  # leaving the block closes the connection mid-stream
        finally:
            self.first_chunk.set()
            self.done.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
