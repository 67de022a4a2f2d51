"""The stable-endpoint router as a real process in front of small uvicorn backends that say who they are.

Backends run in threads of this process; the router runs as ``python -m instance_runtime.router``
so SIGHUP and SIGTERM are exercised as systemd would send them. A backend's ``/stream`` sends its
first chunk, then holds until the test opens a gate, which makes "arrives before the backend
finished" and "in flight during the switch" deterministic rather than timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

WAIT_S = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Backend:
    """A uvicorn server on its own thread: /who names it, /stream is gated, /echo echoes the body."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = _free_port()
        self.gate = threading.Event()
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="off",
                interface="asgi3",
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/stream":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {self.name}-first\n\n".encode(),
                    "more_body": True,
                }
            )
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": f"data: {self.name}-last\n\n".encode()})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = json.dumps(
            {"name": self.name, "echo": body.decode(), "host": _header(scope, b"host")}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def __enter__(self) -> Backend:
        self._thread.start()
        _wait_for(lambda: self._server.started, f"backend {self.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _header(scope: dict[str, Any], name: bytes) -> str:
    return next((v.decode() for n, v in scope["headers"] if n == name), "")


def write_config(path: Path, backend_port: int, model: str, generation: int) -> None:
    """Atomic, as the switch writes it: tmp then rename."""
    tmp = path.with_suffix(".tmp")
    config = {"backend": {"port": backend_port, "model": model, "unit": f"asoba-inference@{model}.service"}}
    tmp.write_text(json.dumps({**config, "generation": generation}))
    os.replace(tmp, path)


class RouterProcess:
    def __init__(self, config: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "ROUTER_HOST": "127.0.0.1",
            "ROUTER_PORT": str(self.port),
            "ROUTER_CONFIG": str(config),
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "instance_runtime.router"], env=env)
        _wait_for(self._up, "router to listen")

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/_router/status", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_router/status", timeout=5)
        assert response.status_code == 200
        return dict(response.json())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=40)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "router.json"


@contextlib.contextmanager
def router_for(config: Path) -> Iterator[RouterProcess]:
    router = RouterProcess(config)
    try:
        yield router
    finally:
        if router.proc.poll() is None:
            router.proc.kill()
            router.proc.wait()


class LoopingClient:
    """Sends /who requests back to back until stopped, recording each answer or failure."""

    def __init__(self, url: str, keep_alive: bool) -> None:
        self.url = url
        self.keep_alive = keep_alive
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if self.keep_alive else 0)
        with httpx.Client(limits=limits, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(f"{self.url}/who")
                    response.raise_for_status()
                    self.answers.append(response.json()["name"])
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def count(self, name: str) -> int:
        return self.answers.count(name)

    def __enter__(self) -> LoopingClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "new-connection"])
def test_switch_drops_nothing_and_in_flight_finishes_on_old_backend(
    config_path: Path, keep_alive: bool
) -> None:
    with Backend("alpha") as a, Backend("beta") as b:
        write_config(config_path, a.port, "alpha", 1)
        with router_for(config_path) as router, httpx.Client(timeout=10) as streamer:
            with streamer.stream("GET", f"{router.url}/stream") as held:
                chunks = held.iter_text()
                # Arrives while the backend is still holding the rest: streamed, not buffered.
                assert next(chunks) == "data: alpha-first\n\n"
                assert held.headers["content-type"] == "text/event-stream"
                with LoopingClient(router.url, keep_alive) as loop:
                    _wait_for(lambda: loop.count("alpha") >= 5, "answers from alpha")
                    write_config(config_path, b.port, "beta", 2)
                    _wait_for(lambda: loop.count("beta") >= 5, "answers from beta")
                    status = router.status()
                    assert status["backend"]["port"] == b.port
                    assert status["generation"] == 2
                    assert status["in_flight"][str(a.port)] == 1  # the held stream
                    a.gate.set()
                    rest = "".join(chunks)
                assert rest == "data: alpha-last\n\n"
            _wait_for(lambda: router.status()["in_flight"][str(a.port)] == 0, "alpha to drain")
            served = router.status()["served"]
            assert router.stop() == 0
    assert loop.failures == []
    first_beta = loop.answers.index("beta")
    assert set(loop.answers[first_beta:]) == {"beta"}  # every answer after the switch comes from beta
    assert served[str(a.port)] == loop.count("alpha") + 1
    assert served[str(b.port)] == loop.count("beta")


def test_request_body_and_host_pass_through(config_path: Path) -> None:
    with Backend("alpha") as a:
        write_config(config_path, a.port, "alpha", 1)
        with router_for(config_path) as router:
            body = "x" * 200_000
            response = httpx.post(
                f"{router.url}/echo", content=body, headers={"host": "stable.example"}, timeout=10
            )
            chunked = httpx.post(f"{router.url}/echo", content=iter([b"ab", b"cd"]), timeout=10)
            assert router.stop() == 0
    assert response.json() == {"name": "alpha", "echo": body, "host": "stable.example"}
    assert chunked.json()["echo"] == "abcd"


def test_invalid_or_missing_config_keeps_last_good_backend(config_path: Path) -> None:
    with Backend("alpha") as a:
        write_config(config_path, a.port, "alpha", 4)
        with router_for(config_path) as router:
            tmp = config_path.with_suffix(".tmp")
            tmp.write_text('{"backend": {"port": "not a port"}}')
            os.replace(tmp, config_path)
            router.proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)  # several polls
            assert httpx.get(f"{router.url}/who", timeout=5).json()["name"] == "alpha"
            config_path.unlink()
            time.sleep(0.3)
            assert httpx.get(f"{router.url}/who", timeout=5).json()["name"] == "alpha"
            status = router.status()
            assert (status["backend"]["port"], status["generation"]) == (a.port, 4)
            assert router.stop() == 0


def test_unreachable_backend_answers_502_with_detail(config_path: Path) -> None:
    dead_port = _free_port()
    write_config(config_path, dead_port, "ghost", 1)
    with router_for(config_path) as router:
        response = httpx.post(f"{router.url}/v1/completions", json={"prompt": "hi"}, timeout=5)
        assert response.status_code == 502
        assert str(dead_port) in response.json()["detail"]
        assert router.status()["in_flight"][str(dead_port)] == 0
        assert router.stop() == 0


def test_sigterm_lets_in_flight_request_finish_then_exits_zero(config_path: Path) -> None:
    with Backend("alpha") as a:
        write_config(config_path, a.port, "alpha", 1)
        with router_for(config_path) as router, httpx.Client(timeout=10) as client:
            with client.stream("GET", f"{router.url}/stream") as held:
                chunks = held.iter_text()
                assert next(chunks) == "data: alpha-first\n\n"
                router.proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                assert router.proc.poll() is None  # still draining the held stream
                a.gate.set()
                assert "".join(chunks) == "data: alpha-last\n\n"
            assert router.proc.wait(timeout=10) == 0


def test_two_real_runtimes_switch_without_a_failed_completion(
    config_path: Path, tiny_llama: Path, runtime_server: Callable[[dict[str, str]], Any]
) -> None:
    old, new = (
        runtime_server({"MODEL_PATH": str(tiny_llama), "MODEL_NAME": name, "DEFAULT_MAX_TOKENS": "4"})
        for name in ("tiny-old", "tiny-new")
    )
    for server in (old, new):
        server.wait_status("healthy")
    write_config(config_path, old.port, "tiny-old", 1)
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=router.url, timeout=60) as client:
            while not stop.is_set():
                try:
                    response = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 4})
                    response.raise_for_status()
                    answers.append(response.json()["model"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    with router_for(config_path) as router:
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            _wait_for(lambda: answers.count("tiny-old") >= 3, "completions from the old model", timeout=60)
            write_config(config_path, new.port, "tiny-new", 2)
            _wait_for(lambda: answers.count("tiny-new") >= 3, "completions from the new model", timeout=60)
        finally:
            stop.set()
            thread.join(timeout=60)
        models = httpx.get(f"{router.url}/v1/models", timeout=10).json()
        assert router.stop() == 0
    assert failures == []
    assert set(answers[answers.index("tiny-new") :]) == {"tiny-new"}
    assert [m["id"] for m in models["data"]] == ["tiny-new"]
