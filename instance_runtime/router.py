"""Stable-endpoint router: a small HTTP/1.1 reverse proxy in front of the resident model backends.

Blue-green switches move the stable port (the one MCP discovery names) from one backend to another
without dropping a request. The switch writes ``router.json`` atomically (tmp + rename)::

    {"backend": {"port": 8002, "model": "smollm2", "unit": "asoba-inference@smollm2.service"},
     "generation": 3}

and this process notices it (stat polled every ~100 ms, or SIGHUP for an immediate re-read).
Routing is per request: a keep-alive client's next request goes to the backend current at that
moment, while a request already accepted finishes on the backend it started on. In-flight and
served counts per backend port are reported on ``GET /_router/status``, which the router answers
itself for loopback clients only (others get 403), so the switch can wait for the old port to
drain before stopping its unit.

Built on asyncio streams and h11 (both sides) because the runtime venv already has them through
uvicorn; bodies are streamed both ways so SSE completions arrive incrementally. A backend that
refuses the connection yields 502 with a JSON ``detail``. SIGTERM stops accepting, lets in-flight
requests finish (up to ``DRAIN_TIMEOUT_S``) and exits 0.

Run with ``python -m instance_runtime.router`` and ``ROUTER_HOST`` / ``ROUTER_PORT`` /
``ROUTER_CONFIG`` in the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h11
from pydantic import BaseModel, Field, ValidationError

logger = logging.getLogger("asoba.router")

POLL_INTERVAL_S = 0.1
DRAIN_TIMEOUT_S = 30.0
READ_CHUNK = 65536
STATUS_PATH = b"/_router/status"

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class Backend(BaseModel):
    port: int = Field(ge=1, le=65535)
    model: str = Field(min_length=1)
    unit: str = Field(min_length=1)


class RouterConfig(BaseModel):
    backend: Backend
    generation: int = Field(ge=0)


class RouterSettings(BaseModel):
    # All interfaces by default: the stable endpoint serves the instance's clients.
    host: str = "0.0.0.0"
    port: int = Field(ge=1, le=65535)
    config_path: Path

    @classmethod
    def from_env(cls) -> RouterSettings:
        port = os.environ.get("ROUTER_PORT")
        config = os.environ.get("ROUTER_CONFIG")
        if not port or not config:
            raise ValueError("ROUTER_PORT and ROUTER_CONFIG must be set")
        return cls(host=os.environ.get("ROUTER_HOST", "0.0.0.0"), port=int(port), config_path=Path(config))


class ConfigError(Exception):
    """router.json is missing or does not hold a valid configuration."""


def load_config(path: Path) -> RouterConfig:
    try:
        return RouterConfig.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"invalid {path}: {exc.error_count()} error(s): {exc.errors()[0]['msg']}") from exc


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def filter_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers, including those the Connection header itself names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


@dataclass
class RouterState:
    """The current backend plus per-port counts; mutated only from the event loop."""

    config: RouterConfig
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    in_flight: dict[int, int] = field(default_factory=dict)
    served: dict[int, int] = field(default_factory=dict)

    def begin(self) -> Backend:
        backend = self.config.backend
        self.in_flight[backend.port] = self.in_flight.get(backend.port, 0) + 1
        return backend

    def end(self, backend: Backend) -> None:
        self.in_flight[backend.port] -= 1
        self.served[backend.port] = self.served.get(backend.port, 0) + 1

    @property
    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())

    def status(self) -> dict[str, object]:
        return {
            "backend": self.config.backend.model_dump(),
            "generation": self.config.generation,
            "in_flight": {str(p): n for p, n in self.in_flight.items()},
            "served": {str(p): n for p, n in self.served.items()},
            "started_at": self.started_at,
        }


class ConfigWatcher:
    """Re-reads router.json when its inode/mtime/size change; a bad file keeps the last good one."""

    def __init__(self, path: Path, state: RouterState, signature: tuple[int, int, int] | None) -> None:
        self.path = path
        self.state = state
        self._signature = signature
        self._reported: str | None = None

    def check(self, force: bool = False) -> None:
        signature = _file_signature(self.path)
        if signature == self._signature and not force:
            return
        self._signature = signature
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            # Logged once per distinct problem, not every poll.
            if str(exc) != self._reported:
                self._reported = str(exc)
                logger.error("%s; keeping backend port %d", exc, self.state.config.backend.port)
            return
        self._reported = None
        if config != self.state.config:
            logger.info(
                "backend -> %s on port %d (generation %d)",
                config.backend.model,
                config.backend.port,
                config.generation,
            )
            self.state.config = config

    async def run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            self.check()


class ClientGone(Exception):
    """The client closed its connection."""


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_CHUNK)
        conn.receive_data(data)  # b"" signals EOF to h11


def _is_loopback(writer: asyncio.StreamWriter) -> bool:
    peer = writer.get_extra_info("peername")
    try:
        address = ipaddress.ip_address(peer[0])
    except (TypeError, IndexError, ValueError):
        return False
    # A dual-stack listener reports IPv4 loopback as ::ffff:127.0.0.1.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class Router:
    def __init__(self, state: RouterState) -> None:
        self.state = state
        self.draining = False
        self._idle: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while not self.draining:
                self._idle.add(task)
                try:
                    event = await _next_event(conn, reader)
                finally:
                    self._idle.discard(task)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed or a protocol violation
                await self._serve(conn, event, reader, writer)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ClientGone, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # idle connection closed by the drain
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: dict[str, object]
    ) -> None:
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if self.draining:
            headers.append((b"connection", b"close"))
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        writer.write(conn.send(h11.Data(data=payload)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    async def _discard_body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> None:
        while True:
            event = await _next_event(conn, reader)
            if isinstance(event, h11.EndOfMessage):
                return
            if isinstance(event, h11.ConnectionClosed):
                raise ClientGone

    async def _serve(
        self,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if request.target.split(b"?", 1)[0] == STATUS_PATH:
            await self._discard_body(conn, reader)
            if not _is_loopback(writer):
                await self._respond(
                    conn, writer, 403, {"detail": "router status is served to loopback clients only"}
                )
            elif request.method != b"GET":
                await self._respond(conn, writer, 405, {"detail": "router status accepts GET only"})
            else:
                await self._respond(conn, writer, 200, self.state.status())
            return
        backend = self.state.begin()
        try:
            await self._proxy(conn, request, reader, writer, backend)
        finally:
            self.state.end(backend)

    async def _proxy(
        self,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        backend: Backend,
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend.port)
        except OSError as exc:
            await self._discard_body(conn, reader)
            await self._respond(
                conn,
                writer,
                502,
                {"detail": f"backend {backend.model} on port {backend.port} is unreachable: {exc}"},
            )
            return
        upstream = h11.Connection(h11.CLIENT)
        try:
            headers = filter_headers(list(request.headers))
            if not any(n.lower() == b"host" for n, _ in headers):
                # HTTP/1.0 clients may omit Host; HTTP/1.1 to the backend requires one.
                headers.append((b"host", f"127.0.0.1:{backend.port}".encode()))
            has_length = any(n.lower() == b"content-length" for n, _ in headers)
            chunked = any(n.lower() == b"transfer-encoding" for n, _ in request.headers)
            if chunked and not has_length:
                headers.append((b"transfer-encoding", b"chunked"))
            # One upstream connection per request: no pool to go stale across a switch.
            headers.append((b"connection", b"close"))
            up_writer.write(
                upstream.send(h11.Request(method=request.method, target=request.target, headers=headers))
                or b""
            )
            # Request body, streamed as it arrives.
            while True:
                event = await _next_event(conn, reader)
                if isinstance(event, h11.Data):
                    up_writer.write(upstream.send(h11.Data(data=event.data)) or b"")
                    await up_writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    up_writer.write(upstream.send(h11.EndOfMessage()) or b"")
                    await up_writer.drain()
                    break
                else:
                    raise ClientGone
            # Response, streamed chunk by chunk (SSE must not be buffered).
            while True:
                event = await _next_event(upstream, up_reader)
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    out_headers = filter_headers(list(event.headers))
                    if self.draining:
                        out_headers.append((b"connection", b"close"))
                    writer.write(
                        conn.send(
                            h11.Response(
                                status_code=event.status_code, headers=out_headers, reason=event.reason
                            )
                        )
                        or b""
                    )
                    await writer.drain()
                elif isinstance(event, h11.Data):
                    writer.write(conn.send(h11.Data(data=event.data)) or b"")
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    writer.write(conn.send(h11.EndOfMessage()) or b"")
                    await writer.drain()
                    return
                else:
                    # Backend closed mid-response: the client connection cannot be reused.
                    raise ClientGone
        except h11.RemoteProtocolError as exc:
            if upstream.their_state is h11.ERROR and conn.our_state is h11.SEND_RESPONSE:
                await self._respond(
                    conn, writer, 502, {"detail": f"backend on port {backend.port} broke HTTP: {exc}"}
                )
            raise ClientGone from exc
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()

    async def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        self.draining = True
        for task in list(self._idle):
            task.cancel()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.state.total_in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._connections):
            task.cancel()


async def serve(settings: RouterSettings) -> None:
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        raise SystemExit(f"router: {exc}") from exc
    state = RouterState(config=config)
    watcher = ConfigWatcher(settings.config_path, state, _file_signature(settings.config_path))
    router = Router(state)
    server = await asyncio.start_server(router.handle, settings.host, settings.port)
    logger.info("routing port %d to %s on port %d", settings.port, config.backend.model, config.backend.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: watcher.check(force=True))
    poller = asyncio.create_task(watcher.run())
    await stop.wait()
    logger.info("SIGTERM: draining %d in-flight request(s)", state.total_in_flight)
    server.close()  # stop accepting; open connections are handled by drain()
    await router.drain()
    poller.cancel()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    try:
        settings = RouterSettings.from_env()
    except (ValueError, ValidationError) as exc:
        raise SystemExit(f"router: {exc}") from exc
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
