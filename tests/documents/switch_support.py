"""What the switch and rollback tests share: the real router in a sandbox's RuntimeRoot, backends
that say who they are, requests held in flight, and clients looping on the stable port.

The router is ``python -m instance_runtime.router`` from RuntimeRoot as install leaves it (the
repository's instance_runtime/ copied there, RuntimeRoot/venv this venv, which has the h11 and
pydantic the runtime's venv has), run by the switch's unit through the systemctl shim. Backends
are small standard-library servers standing in for the runtime: ``/slow`` is held until the test
opens the gate, which makes "a request in flight during the switch" deterministic, and on SIGTERM
they note how many requests were in flight, close the listener at once and finish those.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from local.sandbox import Sandbox, wait_for_port

REPO = Path(__file__).resolve().parents[2]
ROUTER_UNIT = "asoba-router.service"
PRIMARY_UNIT = "asoba-inference.service"
WAIT_S = 30.0

BACKEND_SCRIPT = '''\
"""A runtime stand-in: answers its name; /slow waits for the gate file; SIGTERM drains."""
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

port, name, folder = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
lock = threading.Lock()
in_flight = [0]
stopping = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle keep-alive connection ends, so a stop never waits on it for long

    def do_GET(self):
        with lock:
            in_flight[0] += 1
        try:
            if self.path.startswith("/slow"):
                (folder / (name + ".slow")).touch()
                deadline = time.monotonic() + 60
                while not (folder / "gate").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            body = json.dumps({"name": name, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if stopping.is_set():
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        finally:
            with lock:
                in_flight[0] -= 1

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = False  # server_close() waits for the requests in flight
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}).start()
print("serving %s on port %d" % (name, port), flush=True)
while not stopping.wait(0.05):
    pass
# As the runtime does: the listener closes at once and the requests in flight finish.
with lock:
    (folder / (name + ".sigterm.tmp")).write_text(str(in_flight[0]))
(folder / (name + ".sigterm.tmp")).rename(folder / (name + ".sigterm"))  # read whole or not at all
server.shutdown()
server.server_close()
'''


class SwitchValues(TypedDict, total=False):
    """The switch document's parameters a test sends (the sandbox adds the roots)."""

    StablePort: int
    BackendPort: int
    BackendModel: str
    BackendUnit: str
    OldUnit: str
    OldPort: int
    DrainSeconds: int
    RouterWaitSeconds: int
    executionTimeout: int


def switch_values(
    stable: int, port: int, model: str, unit: str, *, old_unit: str = "", old_port: int | None = None
) -> SwitchValues:
    """A switch of the stable port to ``model`` (``unit`` on ``port``), from ``old_unit``."""
    values = SwitchValues(StablePort=stable, BackendPort=port, BackendModel=model, BackendUnit=unit)
    if old_unit:
        values["OldUnit"] = old_unit
    if old_port is not None:
        values["OldPort"] = old_port
    return values


def lay_out_runtime(sandbox: Sandbox) -> None:
    """RuntimeRoot as install leaves it, as far as the router needs: code, templates, a venv."""
    code = sandbox.runtime_root / "instance_runtime"
    shutil.copytree(REPO / "instance_runtime", code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (sandbox.runtime_root / "venv").symlink_to(Path(sys.prefix))
    (sandbox.runtime_root / ".asoba-runtime").touch()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Backends:
    """Backend units in a sandbox, with their notes under the sandbox's run/ (not the instance's disk)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.folder = sandbox.run_dir / "backends"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.script = self.folder / "backend.py"
        self.script.write_text(BACKEND_SCRIPT)

    def add(self, unit: str, port: int, name: str) -> None:
        """An enabled, running unit serving ``name`` on ``port``."""
        (self.sandbox.unit_dir / unit).write_text(
            f"[Unit]\nDescription=backend {name}\n\n"
            "[Service]\nType=simple\n"
            f"ExecStart={sys.executable} {self.script} {port} {name} {self.folder}\n"
            "Restart=always\nRestartSec=1\nTimeoutStopSec=45\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )
        self.sandbox.systemctl("daemon-reload")
        self.sandbox.systemctl("enable", unit)
        self.sandbox.systemctl("start", unit)
        wait_for_port(port, timeout_s=15)

    def in_flight_at_sigterm(self, name: str) -> int | None:
        note = self.folder / f"{name}.sigterm"
        return int(note.read_text()) if note.is_file() else None

    def slow_started(self, name: str) -> bool:
        return (self.folder / f"{name}.slow").is_file()

    def open_gate(self) -> None:
        (self.folder / "gate").touch()


def get(port: int, path: str = "/who", timeout_s: float = 10.0) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def who(port: int) -> str:
    """The name of the backend that answers on ``port``."""
    status, body = get(port)
    assert status == 200, body
    return str(body["name"])


def router_status(port: int) -> dict[str, Any] | None:
    try:
        status, body = get(port, "/_router/status", timeout_s=2)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    return body if status == 200 and "generation" in body else None


def state(sandbox: Sandbox, unit: str, prop: str = "ActiveState") -> str:
    return sandbox.unit_state(unit).get(prop, "")


def router_config(sandbox: Sandbox) -> dict[str, Any]:
    return dict(json.loads((sandbox.env_dir / "router.json").read_text()))


def backend(port: int, model: str, unit: str) -> dict[str, Any]:
    return {"port": port, "model": model, "unit": unit}


class SlowRequest:
    """GET /slow on ``port`` in a thread: held by the backend until the gate opens."""

    def __init__(self, port: int) -> None:
        self.outcome: tuple[int, dict[str, Any]] | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self._thread.start()

    def _run(self, port: int) -> None:
        try:
            self.outcome = get(port, "/slow", timeout_s=60)
        except BaseException as error:  # handed to the test thread
            self.outcome = error

    def result(self, timeout_s: float = WAIT_S) -> tuple[int, dict[str, Any]]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the slow request did not finish"
        if isinstance(self.outcome, BaseException):
            raise AssertionError(f"the slow request failed: {self.outcome!r}")
        assert self.outcome is not None
        return self.outcome


class Clients:
    """Requests in a loop on ``port`` until stopped: one client keeps its connection alive, the
    other opens a new one for each request. Every answer's backend name and every failure is kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[str, str]] = []  # (client, backend name)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(True,), daemon=True),
            threading.Thread(target=self._loop, args=(False,), daemon=True),
        ]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def names(self, client: str | None = None) -> list[str]:
        return [name for who_, name in list(self.answers) if client is None or who_ == client]

    def count(self, name: str) -> int:
        return self.names().count(name)

    def _loop(self, keep_alive: bool) -> None:
        client = "keep-alive" if keep_alive else "new-connection"
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/who")
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    self.answers.append((client, str(json.loads(body)["name"])))
                else:
                    self.failures.append(f"{client}: HTTP {response.status} {body[:200]!r}")
                if not keep_alive or response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.failures.append(f"{client}: {error!r}")
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()
