"""`make demo`, non-interactively: the whole flow with SmolLM2, then the kept endpoint used with the
lines the demo prints (the real aws CLI, curl), then Ctrl-C shuts everything down.

The demo runs in its own process (its moto server and sandbox are apart from this session's)
on free ports, in a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from local.demo import READY_MARKER, SMOLLM2

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.prefix) / "bin"


class Output:
    """Collects a process's output lines in a thread; wait_for(text) with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(needle in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return any(needle in line for line in self.lines)
                self._changed.wait(min(left, 1.0))
            return True

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_end_to_end_then_the_kept_endpoint(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_", "DEPLOY_MODEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "local.demo", "--keep", "--free-ports", "--workdir", str(workdir)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(process)
    try:
        # The flow runs to the point where the endpoint is kept
        ready = output.wait_for(READY_MARKER, timeout=900)
        text = output.text
        log = workdir / "logs" / "demo.log"
        assert ready, f"demo did not get ready:\n{text[-6000:]}\n--- log tail ---\n{_tail(log)}"

        # The dry run: the plan as a table, nothing deployed
        dry = section(text, "3/6", "4/6")
        assert f"$ deploy-model {SMOLLM2} --dry-run" in dry
        assert f"Plan for {SMOLLM2} (dry run: nothing was changed)" in dry
        assert re.search(r"^  resource\s+need\s+total\s+free now\s+available\s+free after\s+fits$", dry, re.M)
        assert "FITS" in dry
        assert not re.search(r"start\s+sync\b", dry)

        # The deploy: live progress, the record, the wall time
        deploy = section(text, "4/6", "5/6")
        for step in ("validate-input", "collect-resources", "plan", "sync", "install", "health-check"):
            assert re.search(rf"done\s+{step}\s+\d+\.\d s", deploy), step
        assert re.search(r"done\s+sync\s+.*MiB in .* \(.*iB/s\), \d+ of \d+ files", deploy)
        assert f"Deployed {SMOLLM2} on i-" in deploy
        assert re.search(r"deploy part took \d+\.\d s wall time", deploy)
        # sync and install ran at once, then the service started
        assert re.search(r"done\s+start-service\s+\d+\.\d s", deploy)
        # the time to healthy: measured beside the plan's estimate, and the +-30% verdict
        assert re.search(r"^  to healthy\s+\d+\.\d s, estimate \d+\.\d s \([+-]\d+%", deploy, re.M)
        verdict = re.search(
            r"^demo: time to healthy (\d+\.\d) s \(measured\), estimate (\d+\.\d) s: "
            r"[+-]\d+%, (within|NOT within) \+-30% of the estimate$",
            deploy,
            re.M,
        )
        assert verdict, deploy[-3000:]
        print("time to healthy (measured, estimate, verdict):", verdict.groups())
        # the benchmark after the health check: in the record, and the demo's own line
        assert re.search(
            r"^  benchmark\s+time to first token \d+\.\d{3} s, decode [\d,.]+ tok/s", deploy, re.M
        )
        assert re.search(r"^demo: benchmark: first token after [\d.]+ s, decode [\d.]+ tok/s", deploy, re.M)

        # The question: a real, non-empty answer
        answer = re.search(r"^  A: (.*)$", section(text, "5/6", "6/6"), re.M)
        assert answer and answer.group(1).strip(), text
        assert "Paris" in answer.group(1)

        # The status, from the ledger
        status = section(text, "6/6", READY_MARKER)
        # one row per model served: instance, model, port, unit, action, engine, quantization
        assert re.search(
            rf"^i-[0-9a-f]+\s+{SMOLLM2}\s+\d+\s+asoba-inference\.service\s+coexist\s+\S+\s+none\s",
            status,
            re.M,
        ), status

        # The pasted lines work against the kept endpoint: the real aws CLI ...
        exports = re.search(r"^  export (.*)$", text, re.M)
        start = re.search(r"^  (aws --endpoint-url \S+ stepfunctions start-execution .*)$", text, re.M)
        curl = re.search(r"^  curl (http://127\.0\.0\.1:\d+/status)$", text, re.M)
        assert exports and start and curl
        shell_env = {**env, "PATH": f"{VENV_BIN}:{env.get('PATH', '')}"}
        started = _bash(f"export {exports.group(1)}; {start.group(1)}", shell_env)
        arn = json.loads(started)["executionArn"]
        endpoint = re.search(r"--endpoint-url (\S+)", start.group(1)).group(1)  # type: ignore[union-attr]
        names: list[str] = []
        deadline = time.monotonic() + 120
        while "PlanReady" not in names and time.monotonic() < deadline:
            time.sleep(1)
            history = _bash(
                f"export {exports.group(1)}; aws --endpoint-url {endpoint} stepfunctions "
                f"get-execution-history --execution-arn {arn} --output json "
                "--query 'events[].stateEnteredEventDetails.name'",
                shell_env,
            )
            names = [n for n in json.loads(history) if n]
        for state in ("ValidateInput", "AcquireLock", "CollectResources", "Plan", "PlanReady"):
            assert state in names, names
        # ... and curl's URL: the deployed runtime answers /status
        with urllib.request.urlopen(curl.group(1), timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "healthy" and body["model"] == SMOLLM2

        # Ctrl-C stops everything cleanly
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0, output.text[-3000:]
        output.join(10)
        assert "local endpoint and sandbox stopped" in output.text
        assert _nothing_listens(curl.group(1))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _bash(script: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{script}\n{done.stderr}"
    return done.stdout


def _nothing_listens(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except OSError:
        return True
    return False


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
