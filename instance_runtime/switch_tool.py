"""What the switch and rollback SSM documents need of HTTP and JSON, in one place: the backend's
/health, the router's /_router/status, router.json, whether the stable port is free or listening.

Run as a file with the system's python3 (standard library only; `python3 -I
RuntimeRoot/instance_runtime/switch_tool.py COMMAND ARGS`), so it needs neither the runtime's venv
nor its package; each command prints one short line the documents validate before bash uses it.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,200}\.service")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def get(port: int, path: str) -> tuple[int, bytes]:
    with OPENER.open(f"http://127.0.0.1:{port:d}{path}", timeout=2) as answer:
        return answer.status, answer.read(1 << 20)


def config_line(value: Any) -> str | None:
    """'generation port model unit' of a router config (router.json, /_router/status), or None."""
    try:
        generation, backend = value["generation"], value["backend"]
        port, model, unit = backend["port"], backend["model"], backend["unit"]
    except (TypeError, KeyError):
        return None
    if type(generation) is not int or type(port) is not int or generation < 0 or not 0 < port < 65536:
        return None
    if not isinstance(model, str) or not MODEL.fullmatch(model):
        return None
    if not isinstance(unit, str) or not UNIT.fullmatch(unit):
        return None
    return f"{generation:d} {port:d} {model} {unit}"


def router_status(port: int) -> dict[str, Any] | None:
    try:
        status, body = get(port, "/_router/status")
        value = json.loads(body)
    except Exception:
        return None
    return value if status == 200 and config_line(value) is not None else None


def bindable(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def until(condition: Callable[[], bool], seconds: float, pause: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
    return True


def main(command: str, args: list[str]) -> int:
    if command == "health":  # PORT SECONDS: once GET /health answers 200
        port, error = int(args[0]), ["no answer"]

        def healthy() -> bool:
            try:
                status = get(port, "/health")[0]
            except Exception as exc:
                error[0] = str(exc) or type(exc).__name__
                return False
            error[0] = f"HTTP {status:d}"
            return status == 200

        if until(healthy, float(args[1]), 0.2):
            return 0
        print(error[0][:200])
        return 1
    if command == "read-config":  # PATH: its 'generation port model unit'
        try:
            with open(args[0], "rb") as handle:
                line = config_line(json.loads(handle.read(1 << 20)))
        except (OSError, ValueError):
            line = None
        if line is None:
            return 1
        print(line)
        return 0
    if command == "router-status":  # PORT: the router's 'generation port model unit'
        value = router_status(int(args[0]))
        if value is None:
            return 1
        print(config_line(value))
        return 0
    if command == "wait-router":  # PORT GENERATION BACKEND_PORT SECONDS
        port, generation, backend = int(args[0]), int(args[1]), int(args[2])
        seen: list[dict[str, Any] | None] = [None]

        def switched() -> bool:
            seen[0] = router_status(port)
            return seen[0] is not None and (seen[0]["generation"], seen[0]["backend"]["port"]) == (
                generation,
                backend,
            )

        if until(switched, float(args[3]), 0.05):
            return 0
        print("it reports " + (str(config_line(seen[0])) if seen[0] else "nothing (no answer)"))
        return 1
    if command == "drain":  # PORT OLD_PORT SECONDS: seconds until no request is in flight to OLD_PORT
        port, old, started = int(args[0]), str(int(args[1])), time.monotonic()

        def drained() -> bool:
            value = router_status(port)
            in_flight = value.get("in_flight") if value else None
            return isinstance(in_flight, dict) and not in_flight.get(old)

        done = until(drained, float(args[2]), 0.05)
        print(f"{time.monotonic() - started:.3f}")
        return 0 if done else 3
    if command == "wait-free":  # PORT SECONDS: once a listener could bind 0.0.0.0:PORT
        return 0 if until(lambda: bindable(int(args[0])), float(args[1]), 0.005) else 1
    if command == "wait-listen":  # PORT SECONDS: once something accepts on 127.0.0.1:PORT
        return 0 if until(lambda: listening(int(args[0])), float(args[1]), 0.01) else 1
    print(f"switch_tool: unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
