"""Small helpers of the end-to-end tests."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from local.executions import ExecutionResult, wait_for_execution


def get_json(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_healthy(port: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            code, last = get_json(f"http://127.0.0.1:{port}/status", timeout=5)
            if code == 200 and last.get("status") == "healthy":
                return last
        except OSError as error:
            last = error
        time.sleep(0.5)
    raise AssertionError(f"port {port} not healthy within {timeout} s: {last}")


def start(sfn: Any, machine_arn: str, payload: dict[str, Any], name: str) -> str:
    return str(
        sfn.start_execution(stateMachineArn=machine_arn, input=json.dumps(payload), name=name)["executionArn"]
    )


def wait_until_state_entered(sfn: Any, execution_arn: str, state: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        if any(e.get("stateEnteredEventDetails", {}).get("name") == state for e in history):
            return
        if sfn.describe_execution(executionArn=execution_arn)["status"] != "RUNNING":
            raise AssertionError(f"execution ended before entering {state}")
        time.sleep(0.1)
    raise TimeoutError(f"{state} not entered within {timeout} s")


def finish(sfn: Any, execution_arn: str, timeout: float = 600) -> ExecutionResult:
    return wait_for_execution(sfn, execution_arn, timeout=timeout)


class TricklingServer:
    """Answers every request with a huge body, one byte a second: a download that never ends
    and never trips a client's read timeout."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[Any] = []
        self.closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: Any) -> None:
        try:
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 100000000\r\n\r\n"
            )
            while not self.closed:
                connection.sendall(b"\0")
                time.sleep(1)
        except OSError:
            return

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for connection in self.connections:
            connection.close()
