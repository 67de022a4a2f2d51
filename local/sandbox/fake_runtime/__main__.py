"""``python -m instance_runtime`` for the fake runtime (standard library only)."""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STARTED = time.monotonic()


@dataclass(frozen=True)
class Settings:
    model_path: Path
    model_name: str
    host: str
    port: int
    load_s: float
    error: bool

    @classmethod
    def from_env(cls) -> Settings:
        model_path = Path(os.environ["MODEL_PATH"])
        load_file = model_path / "FAKE_RUNTIME_LOAD_SECONDS"
        return cls(
            model_path=model_path,
            model_name=os.environ.get("MODEL_NAME") or model_path.name,
            host=os.environ.get("HOST", "0.0.0.0"),
            port=int(os.environ.get("PORT", "8001")),
            load_s=float(load_file.read_text()) if load_file.is_file() else 0.0,
            error=(model_path / "FAKE_RUNTIME_ERROR").is_file(),
        )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def main() -> int:
    settings = Settings.from_env()
    model_path = settings.model_path
    if not model_path.is_dir():
        print(f"model folder {model_path} does not exist", file=sys.stderr, flush=True)
        return 2
    if (model_path / "FAKE_RUNTIME_CRASH").is_file():
        print("fake runtime: crashing as asked by FAKE_RUNTIME_CRASH", file=sys.stderr, flush=True)
        return 3

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok", "timestamp": _now()})
            elif self.path == "/status":
                if settings.error:
                    state = "error"
                elif time.monotonic() - STARTED < settings.load_s:
                    state = "loading"
                else:
                    state = "healthy"
                rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                self._send(
                    200 if state == "healthy" else 503,
                    {
                        "status": state,
                        "model": settings.model_name,
                        "gpu_memory_used": None,
                        "gpu_memory_total": None,
                        "ram_usage_gb": round(rss_kb / 1048576, 3),
                        "port": settings.port,
                        "timestamp": _now(),
                        "service": "asoba-inference",
                        "error": "fake runtime error" if state == "error" else None,
                    },
                )
            else:
                self._send(404, {"detail": "Not Found"})

        def _send(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((settings.host, settings.port), Handler)
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"fake runtime serving {settings.model_name} on {settings.host}:{settings.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
