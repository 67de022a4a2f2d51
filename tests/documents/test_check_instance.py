"""check-instance: the scheduled check reports every check, passing or not."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from local.sandbox import Sandbox, free_port, run_document, wait_for_port
from tests.fixtures import Aws


def test_check_instance_reports_every_check_even_when_one_fails(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a CPU instance whose model bucket does not exist
    sandbox = make_sandbox(gpu=False)

    run = run_document(aws.ssm, sandbox, "check-instance", S3Uri="s3://no-such-bucket-anywhere/")

    assert (run.status, run.response_code) == ("Failed", 1)
    assert run.result is not None
    assert run.result["error"] == "failed checks: s3"
    checks = {check["name"]: check["status"] for check in run.result["checks"]}  # type: ignore[union-attr]
    assert checks == {
        "s3": "fail",
        "privileges": "pass",
        "systemd": "pass",
        "flux_service": "warn",
        "inference_service": "skip",
        "memory": "pass",
        "gpu": "warn",
        "disk": checks["disk"],
        "python_env": "pass",
        "runtime": "skip",
        "health_format": "skip",
    }
    assert (run.result["failed"], run.result["skipped"]) == (1, 3)
    assert [c["name"] for c in run.result["checks"] if not c["ok"]] == ["s3"]  # type: ignore[union-attr]
    assert (run.result["gpu_free_bytes"], run.result["runtime_healthy"]) == (None, None)


# A runtime stand-in: /status in the seed's format (its status from STATUS), /health, and the
# runtime's request counters on /metrics unless NO_METRICS is set.
RUNTIME = """\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port = int(os.environ["PORT"])
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/status":
            body = json.dumps({
                "status": os.environ.get("STATUS", "healthy"), "model": os.environ["MODEL_NAME"],
                "gpu_memory_used": None, "gpu_memory_total": None, "ram_usage_gb": 0.1, "port": port,
                "timestamp": "2026-12-07T18:00:00", "service": "asoba-inference",
            })
            kind = "application/json"
        elif self.path == "/health":
            body, kind = json.dumps({"status": "ok", "timestamp": "2026-12-07T18:00:00"}), "application/json"
        elif self.path == "/metrics" and not os.environ.get("NO_METRICS"):
            body = (
                "# TYPE asoba_inference_requests_total counter\\n"
                f'asoba_inference_requests_total{{finish_reason="stop"}} {os.environ["SERVED"]}\\n'
                f'asoba_inference_request_failures_total 1\\n'
                f'asoba_inference_requests_running {os.environ["IN_FLIGHT"]}\\n'
                "asoba_inference_requests_waiting 0\\n"
                f'asoba_inference_generation_tokens_total {os.environ["TOKENS"]}\\n'
            )
            kind = "text/plain"
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def add_runtime(sandbox: Sandbox, unit: str, env: dict[str, str], *, state: str) -> None:
    """A runtime unit as install writes it (its own env file, enabled for boot), then `state`:
    active, failed (its process exits 1) or evicted (stopped and disabled)."""
    model = unit.removeprefix("asoba-inference@").removesuffix(".service")
    env_file = sandbox.env_dir / "env" if "@" not in unit else sandbox.env_dir / "models" / model / "env"
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    server = sandbox.root / "opt" / "runtime_stand_in.py"
    server.parent.mkdir(parents=True, exist_ok=True)
    server.write_text(RUNTIME)
    command = f"{sys.executable} {server}"
    if state == "failed":
        command = f"{sys.executable} -c 'raise SystemExit(1)'"
    (sandbox.unit_dir / unit).write_text(
        f"[Service]\nType=simple\nEnvironmentFile={env_file}\nExecStart={command}\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    sandbox.systemctl("daemon-reload")
    if state == "evicted":
        return
    sandbox.systemctl("enable", unit)
    sandbox.systemctl("start", unit, check=False)
    if state == "active":
        wait_for_port(int(env["PORT"]), timeout_s=15)
    else:
        deadline = time.monotonic() + 15
        while sandbox.systemctl("show", unit, "--property=ActiveState", "--value").stdout.strip() != "failed":
            assert time.monotonic() < deadline, f"{unit} did not fail"
            time.sleep(0.1)


def add_primary(sandbox: Sandbox, port: int) -> None:
    """The primary serving model-a: 4 requests done, one failed, none in flight, 40 tokens."""
    counters = {"SERVED": "4", "IN_FLIGHT": "0", "TOKENS": "40"}
    add_runtime(
        sandbox,
        "asoba-inference.service",
        {"MODEL_NAME": "model-a", "PORT": str(port), **counters},
        state="active",
    )


def add_router(sandbox: Sandbox, port: int, *, running: bool) -> None:
    """The stable endpoint's router unit as the switch writes it (enabled), running or stopped."""
    (sandbox.env_dir / "router.env").write_text(f"ROUTER_PORT={port}\n")
    (sandbox.unit_dir / "asoba-router.service").write_text(
        "[Service]\nType=simple\nExecStart=/bin/sleep 600\n[Install]\nWantedBy=multi-user.target\n"
    )
    sandbox.systemctl("daemon-reload")
    sandbox.systemctl("enable", "asoba-router.service")
    if running:
        sandbox.systemctl("start", "asoba-router.service")


def test_every_resident_model_is_checked_and_its_requests_counted(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the primary and a resident model serving, a resident evicted (stopped, disabled),
    # and the router holding the stable port
    sandbox = make_sandbox(gpu=False)
    primary_port, resident_port = free_port(), free_port()
    add_primary(sandbox, primary_port)
    add_runtime(
        sandbox,
        "asoba-inference@model-b.service",
        {"MODEL_NAME": "model-b", "PORT": str(resident_port), "SERVED": "2", "IN_FLIGHT": "1", "TOKENS": "9"},
        state="active",
    )
    evicted = {"MODEL_NAME": "model-c", "PORT": "8004"}
    add_runtime(sandbox, "asoba-inference@model-c.service", evicted, state="evicted")
    add_router(sandbox, 8001, running=True)

    run = run_document(aws.ssm, sandbox, "check-instance", S3Uri=f"s3://{aws.bucket}/")

    # Then both serving units are checked, the evicted one is no problem, and the requests the
    # idle policy reads are those of both (a resident's traffic keeps the instance busy)
    assert run.status == "Success", run.explain()
    assert run.result is not None
    checks = {check["name"]: check for check in run.result["checks"]}  # type: ignore[union-attr]
    assert checks["inference_service"]["status"] == "pass"
    detail = checks["inference_service"]["detail"]
    assert "asoba-inference.service is active" in detail
    assert "asoba-inference@model-b.service is active" in detail
    assert "asoba-inference@model-c.service is stopped and disabled" in detail
    assert checks["health_format"] == {
        "name": "health_format",
        "status": "pass",
        "ok": True,
        "detail": f"/status and /health carry every expected field (ports {primary_port}, {resident_port})",
    }
    assert checks["router"]["status"] == "pass"
    assert checks["router"]["detail"] == "asoba-router.service is active (stable port 8001)"
    # each unit: its requests and one failed request
    assert run.result["requests"] == {"served": 4 + 1 + 2 + 1, "in_flight": 1, "generated_tokens": 49}
    assert run.result["runtime_healthy"] is True


def test_a_failed_resident_or_a_stopped_router_fails_the_check(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the primary serving, one resident whose process failed, one still loading without
    # counters, and the router enabled but not running
    sandbox = make_sandbox(gpu=False)
    primary_port, loading_port = free_port(), free_port()
    add_primary(sandbox, primary_port)
    crashing = {"MODEL_NAME": "model-b", "PORT": "8003"}
    add_runtime(sandbox, "asoba-inference@model-b.service", crashing, state="failed")
    add_runtime(
        sandbox,
        "asoba-inference@model-d.service",
        {"MODEL_NAME": "model-d", "PORT": str(loading_port), "STATUS": "loading", "NO_METRICS": "1"},
        state="active",
    )
    add_router(sandbox, 8001, running=False)

    run = run_document(aws.ssm, sandbox, "check-instance", S3Uri=f"s3://{aws.bucket}/")

    # Then the failed unit and the router are named, the instance is not healthy, and its
    # activity is unknown (a unit without counters: the idle policy must not stop it)
    assert (run.status, run.response_code) == ("Failed", 1)
    assert run.result is not None
    assert run.result["error"] == "failed checks: inference_service, router"
    checks = {check["name"]: check for check in run.result["checks"]}  # type: ignore[union-attr]
    assert "asoba-inference@model-b.service has failed" in checks["inference_service"]["detail"]
    assert checks["router"]["detail"] == (
        "asoba-router.service is inactive: the stable port 8001 does not answer"
    )
    assert checks["health_format"]["status"] == "pass"
    assert (run.result["runtime_healthy"], run.result["requests"]) == (False, None)
