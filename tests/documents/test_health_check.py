"""health-check: one status out of /health and /status, whatever the service answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from local.sandbox import Sandbox, free_port, run_document
from tests.fixtures import Aws

Answers = dict[str, tuple[int, str]]


@pytest.fixture
def serve() -> Iterator[Callable[[Answers], int]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answers: Answers) -> int:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = answers.get(self.path, (404, '{"detail": "Not Found"}'))
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


HEALTH = (200, '{"status": "ok", "timestamp": "2025-08-06T12:34:56"}')


def status(state: str, **extra: object) -> tuple[int, str]:
    body: dict[str, object] = {
        "status": state,
        "model": "tiny",
        "gpu_memory_used": None,
        "gpu_memory_total": None,
        "ram_usage_gb": 1.5,
        "port": 8001,
        "timestamp": "2025-08-06T12:34:56",
        "service": "asoba-inference",
    }
    body.update(extra)
    return (200 if state == "healthy" else 503, json.dumps(body))


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"/health": HEALTH, "/status": status("healthy")}, "healthy"),
        ({"/health": HEALTH, "/status": status("loading")}, "loading"),
        ({"/health": HEALTH, "/status": status("error", error="CUDA out of memory")}, "error"),
        ({"/health": HEALTH}, "healthy"),  # a service without /status, healthy by /health alone
        ({"/health": (500, "<html>oops</html>"), "/status": (500, "<html>oops</html>")}, "error"),
    ],
)
def test_the_status_follows_the_answers(
    answers: Answers,
    expected: str,
    aws: Aws,
    make_sandbox: Callable[..., Sandbox],
    serve: Callable[[Answers], int],
) -> None:
    sandbox = make_sandbox()
    port = serve(answers)

    run = run_document(aws.ssm, sandbox, "health-check", Port=str(port))

    assert run.status == "Success", run.explain()
    assert run.result is not None
    assert (run.result["ok"], run.result["status"], run.result["port"]) == (True, expected, port)
    status_body, health_body = answers.get("/status", (0, ""))[1], answers["/health"][1]
    if status_body.startswith("{"):
        assert run.result["status_body"] == json.loads(status_body)
    if health_body.startswith("{"):
        assert (run.result["health"], run.result["health_text"]) == (json.loads(health_body), None)
    else:  # not JSON: reported as text, never in place of the object
        assert (run.result["health"], run.result["health_text"]) == (None, health_body)
    if expected == "error":
        assert run.result["error"]


def test_nothing_listening_is_down(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    run = run_document(aws.ssm, sandbox, "health-check", Port=str(free_port()))
    assert run.status == "Success", run.explain()
    assert run.result is not None
    assert (run.result["status"], run.result["health"], run.result["status_body"]) == ("down", None, None)
    assert run.result["health_http_status"] == 0


def test_require_healthy_turns_anything_else_into_a_failure(
    aws: Aws, make_sandbox: Callable[..., Sandbox], serve: Callable[[Answers], int]
) -> None:
    sandbox = make_sandbox()
    port = serve({"/health": HEALTH, "/status": status("loading")})
    run = run_document(aws.ssm, sandbox, "health-check", Port=str(port), RequireHealthy="true")
    assert (run.status, run.response_code) == ("Failed", 1)
    assert run.result is not None
    assert (run.result["ok"], run.result["status"]) == (False, "loading")
    assert run.result["error"] == f"service on 127.0.0.1:{port} is loading"


class TurnsHealthy(dict[str, tuple[int, str]]):
    """Answers "loading" on /status until it was asked `after` times, then "healthy"."""

    def __init__(self, after: int) -> None:
        super().__init__({"/health": HEALTH, "/status": status("loading")})
        self.after = after
        self.asked = 0

    def get(self, key: str, default: object = None) -> Any:
        if key == "/status":
            self.asked += 1
            if self.asked >= self.after:
                return status("healthy")
        return super().get(key, default)


def test_with_a_wait_it_asks_again_until_the_service_turns_healthy(
    aws: Aws, make_sandbox: Callable[..., Sandbox], serve: Callable[[Answers], int]
) -> None:
    # One command waits on the instance while the model loads (the state machine sends it once)
    sandbox = make_sandbox()
    answers = TurnsHealthy(after=3)
    port = serve(answers)
    run = run_document(
        aws.ssm, sandbox, "health-check", Port=str(port), WaitSeconds="60", IntervalSeconds="1"
    )
    assert run.status == "Success", run.explain()
    assert run.result is not None
    assert (run.result["ok"], run.result["status"]) == (True, "healthy")
    assert answers.asked == 3


def test_the_wait_is_bounded_and_reports_the_last_status(
    aws: Aws, make_sandbox: Callable[..., Sandbox], serve: Callable[[Answers], int]
) -> None:
    sandbox = make_sandbox()
    answers = TurnsHealthy(after=10_000)
    port = serve(answers)
    run = run_document(aws.ssm, sandbox, "health-check", Port=str(port), WaitSeconds="2", IntervalSeconds="1")
    assert run.status == "Success", run.explain()
    assert run.result is not None
    assert run.result["status"] == "loading"
    assert 2 <= answers.asked <= 4  # asked again within its budget, then reported


def test_an_error_ends_the_wait_at_once(
    aws: Aws, make_sandbox: Callable[..., Sandbox], serve: Callable[[Answers], int]
) -> None:
    sandbox = make_sandbox()
    port = serve({"/health": HEALTH, "/status": status("error", error="CUDA out of memory")})
    run = run_document(aws.ssm, sandbox, "health-check", Port=str(port), WaitSeconds="60")
    assert run.status == "Success", run.explain()
    assert run.result is not None
    assert (run.result["status"], run.result["error"]) == ("error", "CUDA out of memory")


def test_while_loading_each_ask_reports_the_load_s_progress_on_stderr(
    aws: Aws, make_sandbox: Callable[..., Sandbox], serve: Callable[[Answers], int]
) -> None:
    # Given a runtime streaming its weights: /status says loading, with the bytes read so far
    sandbox = make_sandbox()
    load = {"from": "stream", "streamed_bytes": 100 * 2**20, "source_bytes": 400 * 2**20}
    port = serve({"/health": HEALTH, "/status": status("loading", load=load)})
    # When the health check asks once
    run = run_document(aws.ssm, sandbox, "health-check", Port=str(port))
    # Then besides its result, a progress line on stderr (streamed to the command-output log
    # group, where deploy-model's progress bar reads it) says how far the load is
    assert run.status == "Success", run.explain()
    progress = [
        json.loads(line)["progress"] for line in run.stderr.splitlines() if line.startswith('{"progress"')
    ]
    assert progress == [
        {
            "step": "health-check",
            "status": "loading",
            "from": "stream",
            "bytes": 100 * 2**20,
            "total_bytes": 400 * 2**20,
        }
    ]
    # and a healthy service reports none
    healthy = run_document(
        aws.ssm, sandbox, "health-check", Port=str(serve({"/health": HEALTH, "/status": status("healthy")}))
    )
    assert healthy.status == "Success" and '{"progress"' not in healthy.stderr
