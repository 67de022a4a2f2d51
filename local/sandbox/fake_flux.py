"""A stand-in for the instance's Flux image API: a real, small HTTP server (standard library only).

    python fake_flux.py --port 8000 [--host 127.0.0.1] [--ram-mib 64]

GET /health -> {"status": "ok"}; GET /status -> the service's state; anything else -> 404.
It holds ``--ram-mib`` of touched memory so its RSS looks like a loaded model. The sandbox runs
it as flux-api.service; the fake nvidia-smi says how much GPU memory it holds.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()
PORT = 0


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-flux/1.0"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")})
        elif self.path == "/status":
            self._send(
                200,
                {
                    "status": "healthy",
                    "service": "flux-api",
                    "model": "flux-schnell",
                    "port": PORT,
                    "uptime_s": round(time.time() - STARTED, 3),
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

    def log_message(self, format: str, *args: object) -> None:  # quiet: the journal stays small
        return


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ram-mib", type=int, default=0)
    args = parser.parse_args(argv)
    global PORT
    PORT = args.port
    ballast = bytearray(args.ram_mib * 1024 * 1024)
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"fake flux listening on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
