"""collect-resources: the planner's instance snapshot, from a real (sandboxed) instance."""

from __future__ import annotations

from collections.abc import Callable

from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sandbox import Sandbox, free_port, run_document
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
