"""The planner's models root and time_to_healthy: the fastest measured root with room, why, the
gp3-baseline warning, and the estimate's parts from the measured rates.

Given the seed's models at their real sizes (in-memory headers) and the seed's instance with
candidate roots as collect-resources reports them (an EBS root volume at gp3's baseline, a
600 GB NVMe instance store), when planned, then the plan names the root and its reason, and the
sync and install are sent that root.
"""

from __future__ import annotations

from typing import Any

import pytest

from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.planner import Plan, plan
from asoba_deploy.core.planner.roots import GP3_BASELINE_BYTES_PER_S
from asoba_deploy.core.planner.timing import (
    DEFAULT_WRITE_BYTES_PER_S,
    HEALTH_PROBE_S,
    INSTALL_BUILD_S,
    INSTALL_REUSE_S,
    STREAM_BYTES_PER_S,
    WARMUP_S,
)
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.requirement_sets import REQUIREMENTS, requirements_sha256
from asoba_deploy.core.snapshot import InstanceSnapshot, ModelsRootInfo, disk_kind
from asoba_deploy.core.state import ExecutionState
from asoba_deploy.core.steps import collect_parameters, install_parameters, sync_parameters
from local.sparse_models import seed_manifest
from tests.unit.planner_support import GIB, MIB, seed_snapshot
from tests.unit.test_steps import CONFIG

STEP_OVERHEAD_S = Policy().step_overhead_s  # the context's default: 1 s, as on AWS
EBS = "/opt/models"
NVME = "/mnt/nvme/models"


def ebs_root(free: int = 400 * GIB, write: int | None = 124 * MIB, **extra: Any) -> dict[str, Any]:
    return {
        "path": EBS,
        "exists": True,
        "probed_at": EBS,
        "device": "/dev/nvme0n1p1",
        "fstype": "ext4",
        "device_model": "Amazon Elastic Block Store",
        "device_serial": "vol0a1b2c3d4e5f60718",
        "free_bytes": free,
        "probe_bytes": 64 * MIB,
        "write_bytes_per_s": write,
        "read_bytes_per_s": 125 * MIB if write is not None else None,
        **extra,
    }


def nvme_root(free: int = 550 * GIB, write: int | None = 1900 * MIB, **extra: Any) -> dict[str, Any]:
    return {
        "path": NVME,
        "exists": False,
        "probed_at": "/mnt/nvme",
        "device": "/dev/nvme1n1",
        "fstype": "xfs",
        "device_model": "Amazon EC2 NVMe Instance Storage",
        "device_serial": "AWS2D5B0C3A1E7F9",
        "free_bytes": free,
        "probe_bytes": 64 * MIB,
        "write_bytes_per_s": write,
        "read_bytes_per_s": 2800 * MIB if write is not None else None,
        **extra,
    }


def planned(model: str, snapshot: InstanceSnapshot, policy: Policy | None = None, **request: Any) -> Plan:
    return plan(seed_manifest(model), snapshot, DeployRequest(model=model, **request), policy or Policy())


def test_the_fastest_root_with_room_is_chosen_and_sent_to_sync_and_install() -> None:
    # Given the EBS root first in the context's order, the NVMe instance store second
    snapshot = seed_snapshot(models_roots=[ebs_root(), nvme_root()])

    # When deepseek-r1-8b (15 GiB) is planned
    result = planned("deepseek-r1-8b", snapshot)

    # Then the NVMe store is chosen, for its measured rate, and the plan says so
    assert result.fits, result.shortfalls
    assert result.models_root == NVME
    assert result.model_path == f"{NVME}/deepseek-r1-8b"
    assert all(f.local_path.startswith(f"{NVME}/deepseek-r1-8b/") for f in result.files)
    reason = result.models_root_reason
    assert reason.startswith(f"{NVME} (NVMe instance store")
    assert "writes 1.9 GiB/s measured" in reason and "the fastest models root with room" in reason
    assert f"over {EBS} (EBS vol-0a1b2c3d4e5f60718" in reason and "writes 124 MiB/s measured" in reason
    assert not any("gp3" in w for w in result.warnings)
    assert any(f"to {NVME}/" in r for r in result.reasons)
    # And the sync writes there; install loads from there
    state = ExecutionState(
        request=DeployRequest(model=result.model), instance_id="i-0123456789abcdef0", plan=result
    )
    assert sync_parameters(CONFIG, state)["ModelsRoot"] == NVME
    assert install_parameters(CONFIG, state)["ModelPath"] == f"{NVME}/deepseek-r1-8b"


def test_collect_resources_is_sent_the_candidate_roots_in_order() -> None:
    state = ExecutionState(request=DeployRequest(model="m"), instance_id="i-0123456789abcdef0")
    assert collect_parameters(CONFIG, state)["ModelsRoots"] == CONFIG.instance_roots.models_root
    config = CONFIG.model_copy(
        update={"deploy": CONFIG.deploy.model_copy(update={"models_roots": [NVME, EBS]})}
    )
    assert collect_parameters(config, state)["ModelsRoots"] == f"{NVME}:{EBS}"


def test_a_faster_root_without_room_loses_to_a_slower_one_with_room() -> None:
    # The instance store holds 10 GiB free: deepseek's 15 GiB + 2 GiB reserve do not fit there
    snapshot = seed_snapshot(models_roots=[nvme_root(free=10 * GIB), ebs_root()])
    result = planned("deepseek-r1-8b", snapshot)
    assert result.fits and result.models_root == EBS
    assert f"{NVME} (NVMe instance store" in result.models_root_reason
    assert result.models_root_reason.endswith("writes 1.9 GiB/s measured), no room")
    # And the only choice writing at gp3's baseline is warned about, with what it costs
    (warning,) = [w for w in result.warnings if "gp3" in w]
    assert warning.startswith(f"models root {EBS} writes 124 MiB/s measured, at or below gp3's 125 MiB/s")
    assert "takes ~124 s" in warning and "the 10 Gbps link brings it in ~13 s" in warning


def test_the_only_root_at_the_gp3_baseline_is_warned_about() -> None:
    result = planned("deepseek-r1-8b", seed_snapshot(models_roots=[ebs_root(write=GP3_BASELINE_BYTES_PER_S)]))
    assert result.models_root == EBS
    assert result.models_root_reason.endswith("the only models root")
    assert any(
        w.startswith(f"models root {EBS} (the only candidate) writes 125 MiB/s") for w in result.warnings
    )
    # A root well above the baseline is not
    fast = planned("deepseek-r1-8b", seed_snapshot(models_roots=[ebs_root(write=600 * MIB)]))
    assert not any("gp3" in w for w in fast.warnings)


def test_ties_keep_the_context_order_and_unmeasured_roots_rank_last() -> None:
    same = 900 * MIB
    first = planned(
        "deepseek-r1-8b", seed_snapshot(models_roots=[ebs_root(write=same), nvme_root(write=same)])
    )
    assert first.models_root == EBS
    flipped = planned(
        "deepseek-r1-8b", seed_snapshot(models_roots=[nvme_root(write=same), ebs_root(write=same)])
    )
    assert flipped.models_root == NVME
    # A root whose probe did not run (no rate) ranks after any measured one, even a slow one
    unmeasured = nvme_root(write=None, probe_error="not probed: not writable")
    result = planned("deepseek-r1-8b", seed_snapshot(models_roots=[unmeasured, ebs_root()]))
    assert result.models_root == EBS
    assert "write rate not measured" in result.models_root_reason


def test_no_root_with_room_does_not_fit_and_names_every_root() -> None:
    snapshot = seed_snapshot(models_roots=[ebs_root(free=5 * GIB), nvme_root(free=9 * GIB)])
    result = planned("deepseek-r1-8b", snapshot)
    assert not result.fits
    # The closest (most free) is shown, and the shortfall says why none would do
    assert result.models_root == NVME
    (shortfall,) = result.shortfalls
    assert shortfall == result.models_root_reason
    assert shortfall.startswith(
        "no models root has room for the model (15.0 GiB to transfer + 2.0 GiB reserve)"
    )
    assert f"{EBS} (EBS" in shortfall and "5.0 GiB free" in shortfall and "9.0 GiB free" in shortfall
    assert shortfall.endswith(f"{NVME} has the most free space")
    assert not result.disk.fits


def test_a_root_already_holding_the_model_wins_and_transfers_nothing() -> None:
    # A whole copy of deepseek on the (slower) EBS root, found by collect-resources there
    manifest = seed_manifest("deepseek-r1-8b")
    copy = {
        "name": "deepseek-r1-8b",
        "bytes": manifest.total_bytes,
        "files": len(manifest.files),
        "root": EBS,
    }
    snapshot = seed_snapshot(models_roots=[nvme_root(), ebs_root()], cached_models=[copy])
    result = planned("deepseek-r1-8b", snapshot)
    assert result.models_root == EBS and result.bytes_to_transfer == 0
    assert result.models_root_reason.endswith("it already holds the whole model, nothing to transfer")
    assert result.time_to_healthy is not None and result.time_to_healthy.transfer_s == 0
    # A copy counts only in the root that holds it: one elsewhere is transferred again
    moved = seed_snapshot(
        models_roots=[nvme_root()], cached_models=[{**copy, "root": "/srv/other"}], models_root=EBS
    )
    elsewhere = planned("deepseek-r1-8b", moved)
    assert elsewhere.models_root == NVME and elsewhere.bytes_to_transfer == elsewhere.total_bytes


def test_an_older_snapshot_without_candidates_keeps_its_models_root() -> None:
    result = planned("deepseek-r1-8b", seed_snapshot())
    assert result.models_root == "/opt/models" and result.model_path == "/opt/models/deepseek-r1-8b"
    assert result.models_root_reason == (
        "/opt/models (device not reported; 400.0 GiB free; write rate not measured): the only models root"
    )
    estimate = result.time_to_healthy
    assert estimate is not None
    assert estimate.basis["write_rate_from"] == "gp3 baseline (not measured)"
    assert estimate.transfer_s == pytest.approx(
        result.bytes_to_transfer / DEFAULT_WRITE_BYTES_PER_S, rel=1e-3
    )


def test_time_to_healthy_parts_come_from_the_measured_rates() -> None:
    # Given the store measured at 1.9 GiB/s writes, 2.8 GiB/s reads, and a 10 Gbps link
    snapshot = seed_snapshot(models_roots=[nvme_root()])
    result = planned("deepseek-r1-8b", snapshot, Policy(load_from="disk"))
    estimate = result.time_to_healthy
    assert estimate is not None and result.load_from == "disk"
    link = 10e9 / 8
    # Transfer at min(link, write): the link, 1.25 GB/s < 1.9 GiB/s
    assert estimate.transfer_s == pytest.approx(result.bytes_to_transfer / link, abs=0.01)
    # No venvs reported: install builds the transformers venv
    assert result.install_download and estimate.install_s == INSTALL_BUILD_S["transformers"]
    weights = seed_manifest("deepseek-r1-8b").weight_bytes
    assert estimate.load_s == pytest.approx(weights / (2800 * MIB), abs=0.01)
    assert estimate.warmup_s == WARMUP_S[result.engine]
    # The steps' overhead (snapshot-previous, start-service, the last probe), then sync and
    # install side by side, then load and warm-up
    steps = (2 + len(result.stop_services[:1])) * STEP_OVERHEAD_S + HEALTH_PROBE_S  # + stop-flux
    assert estimate.elapsed_s == 0 and estimate.steps_s == steps
    expected = max(estimate.transfer_s, estimate.install_s) + estimate.load_s + estimate.warmup_s
    assert estimate.estimate_s == pytest.approx(estimate.steps_s + expected, abs=0.02)
    basis = estimate.basis
    assert basis["models_root"] == NVME and basis["transfer_bytes"] == result.bytes_to_transfer
    assert (basis["write_bytes_per_s"], basis["read_bytes_per_s"]) == (1900 * MIB, 2800 * MIB)
    assert basis["link_bytes_per_s"] == round(link) and basis["load_from"] == "disk"

    # A slower link (context link_gbps 2) makes the link the bound; a reused venv costs its writes only
    venv = {
        "hash": "0123456789abcdef",
        "engine": "transformers",
        "requirements_sha256": requirements_sha256(REQUIREMENTS["transformers"]),
        "current": True,
    }
    slow = Policy(link_bytes_per_s=2e9 / 8, load_from="disk")
    reused = planned("deepseek-r1-8b", seed_snapshot(models_roots=[nvme_root()], runtime_venvs=[venv]), slow)
    again = reused.time_to_healthy
    assert again is not None and not reused.install_download
    assert again.install_s == INSTALL_REUSE_S
    assert again.transfer_s == pytest.approx(reused.bytes_to_transfer / 2.5e8, abs=0.01)
    assert again.estimate_s == pytest.approx(
        again.steps_s + again.transfer_s + again.load_s + again.warmup_s, abs=0.02
    )


def test_a_plan_that_streams_estimates_the_load_at_the_link() -> None:
    # When the plan streams (Part C's load_from), the load runs at min(half the link: the sync
    # reads the same bytes beside it, streamer) and does not wait for the sync
    result = planned("deepseek-r1-8b", seed_snapshot(models_roots=[ebs_root()]), Policy(load_from="stream"))
    estimate = result.time_to_healthy
    assert result.load_from == "stream" and estimate is not None
    assert estimate.basis["load_from"] == "stream" and estimate.basis["link_shared_with_the_sync"]
    weights = seed_manifest("deepseek-r1-8b").weight_bytes
    assert estimate.load_s == pytest.approx(weights / (1.25e9 / 2), abs=0.01)
    assert estimate.estimate_s == pytest.approx(
        estimate.steps_s + estimate.install_s + estimate.load_s + estimate.warmup_s, abs=0.02
    )
    assert estimate.transfer_s > estimate.estimate_s - estimate.install_s  # the slow write is off the path


def test_a_streamed_load_does_not_wait_for_the_sync() -> None:
    from asoba_deploy.core.planner.roots import choose_root
    from asoba_deploy.core.planner.timing import time_to_healthy

    manifest = seed_manifest("deepseek-r1-8b")
    snapshot = seed_snapshot(models_roots=[ebs_root()])
    policy = Policy()
    root = choose_root([manifest], snapshot, policy).chosen
    disk = time_to_healthy(
        root=root,
        policy=policy,
        engine="vllm",
        transfer_bytes=manifest.total_bytes,
        load_bytes=manifest.weight_bytes,
        install_builds=False,
    )
    stream = time_to_healthy(
        root=root,
        policy=policy,
        engine="vllm",
        transfer_bytes=manifest.total_bytes,
        load_bytes=manifest.weight_bytes,
        install_builds=False,
        load_from="stream",
    )
    steps = 2 * STEP_OVERHEAD_S + HEALTH_PROBE_S  # snapshot-previous, start-service, the last probe
    assert disk.estimate_s == pytest.approx(
        steps + disk.transfer_s + disk.load_s + WARMUP_S["vllm"], abs=0.02
    )
    assert stream.estimate_s == pytest.approx(
        steps + INSTALL_REUSE_S + stream.load_s + WARMUP_S["vllm"], abs=0.02
    )
    # the streamer and the sync share the link while both read
    assert stream.load_s == pytest.approx(
        manifest.weight_bytes / min(1.25e9 / 2, STREAM_BYTES_PER_S), abs=0.01
    )
    assert stream.basis["load_from"] == "stream"
    assert stream.estimate_s < disk.estimate_s / 3  # 124 MiB/s twice (write, read) vs the link once


def test_the_estimate_counts_the_time_before_the_plan_and_a_flux_stop() -> None:
    from asoba_deploy.core.planner.roots import choose_root
    from asoba_deploy.core.planner.timing import time_to_healthy

    manifest = seed_manifest("deepseek-r1-8b")
    policy = Policy()
    root = choose_root([manifest], seed_snapshot(models_roots=[ebs_root()]), policy).chosen
    common: dict[str, Any] = {
        "root": root,
        "policy": policy,
        "engine": "vllm",
        "transfer_bytes": manifest.total_bytes,
        "load_bytes": manifest.weight_bytes,
        "install_builds": False,
    }
    fresh = time_to_healthy(**common)
    # a cheaper step (the local cloud's 0.3 s) shortens the estimate by what the path's steps save
    local = time_to_healthy(**{**common, "policy": Policy(step_overhead_s=0.3)})
    assert local.steps_s == pytest.approx(2 * 0.3 + HEALTH_PROBE_S)
    assert local.estimate_s == pytest.approx(fresh.estimate_s - 2 * (STEP_OVERHEAD_S - 0.3), abs=0.02)
    # 3.2 s already spent (validate, lock, collect-resources) and Flux to stop first
    later = time_to_healthy(**common, elapsed_s=3.2, stops_services=True)
    assert later.elapsed_s == 3.2 and later.steps_s == fresh.steps_s + STEP_OVERHEAD_S
    assert later.estimate_s == pytest.approx(fresh.estimate_s + 3.2 + STEP_OVERHEAD_S, abs=0.02)


def test_the_plan_streams_only_when_that_is_faster() -> None:
    # Given a slow link (0.5 Gbps, as the local cloud's S3 is) beside a fast store, the streamer
    # would share the link with the sync: sync-then-load is faster, and the plan says so
    slow = planned(
        "deepseek-r1-8b", seed_snapshot(models_roots=[nvme_root()]), Policy(link_bytes_per_s=0.5e9 / 8)
    )
    assert slow.load_from == "disk" and slow.load_reason.startswith("disk: sync-then-load is faster here")
    assert slow.time_to_healthy is not None and slow.time_to_healthy.basis["load_from"] == "disk"
    # And on the g5's 10 Gbps link beside a gp3 volume, streaming wins and says by how much
    fast = planned("deepseek-r1-8b", seed_snapshot(models_roots=[ebs_root()]), Policy())
    assert fast.load_from == "stream" and "with sync-then-load)" in fast.load_reason
    # Forced, the plan streams whatever the estimate says
    forced = planned(
        "deepseek-r1-8b",
        seed_snapshot(models_roots=[nvme_root()]),
        Policy(load_from="stream", link_bytes_per_s=0.5e9 / 8),
    )
    assert forced.load_from == "stream"


def test_disk_kind_and_volume_id_from_sysfs_strings() -> None:
    assert disk_kind("Amazon EC2 NVMe Instance Storage") == "nvme-instance-store"
    assert disk_kind("Amazon Elastic Block Store              ") == "ebs"
    assert disk_kind("") == disk_kind(None) == disk_kind("QEMU HARDDISK") == "unknown"
    root = ModelsRootInfo.model_validate(ebs_root())
    assert (root.kind, root.volume_id) == ("ebs", "vol-0a1b2c3d4e5f60718")
    store = ModelsRootInfo.model_validate(nvme_root())
    assert (store.kind, store.volume_id) == ("nvme-instance-store", None)


def test_a_venv_built_from_packages_the_base_python_has_downloads_nothing() -> None:
    from asoba_deploy.core.requirement_sets import package_name

    lines = REQUIREMENTS["transformers"]
    runtime = {"python": "/usr/bin/python3", "source": "base-python"}
    everything = {package_name(line): line.split("==")[1] for line in lines}
    policy = Policy(load_from="disk")

    # Given a BasePython that has every pinned package (the local cloud's): install builds the
    # venv with no download, at the cost of an install that reuses one
    have_all = seed_snapshot(runtime_python={**runtime, "packages": everything})
    result = planned("deepseek-r1-8b", have_all, policy)
    estimate = result.time_to_healthy
    assert result.install_download and estimate is not None
    assert estimate.install_s == INSTALL_REUSE_S and estimate.basis["install_fetches"] == 0
    assert "no downloads" in estimate.basis["install"]

    # Given one package in another version: pip downloads it, the build's constant applies
    older = {**everything, "fastapi": "0.1.0"}
    result = planned("deepseek-r1-8b", seed_snapshot(runtime_python={**runtime, "packages": older}), policy)
    assert result.time_to_healthy is not None
    assert result.time_to_healthy.install_s == INSTALL_BUILD_S["transformers"]
    assert result.time_to_healthy.basis["install_fetches"] == 1

    # Given a snapshot that does not report packages: every line counts as a download
    result = planned("deepseek-r1-8b", seed_snapshot(runtime_python=runtime), policy)
    assert result.time_to_healthy is not None
    assert result.time_to_healthy.basis["install_fetches"] == len(lines)


def test_the_cli_plan_shows_the_root_its_reason_and_the_estimate_with_its_parts() -> None:
    from asoba_deploy.cli.render import human_seconds, plan_table

    result = planned(
        "deepseek-r1-8b", seed_snapshot(models_roots=[ebs_root(), nvme_root()]), Policy(load_from="disk")
    )
    text = plan_table(result)
    lines = text.splitlines()
    root_line = next(i for i, line in enumerate(lines) if line.strip().startswith("models root"))
    assert lines[root_line].split()[-1] == NVME
    assert "the fastest models root with room" in " ".join(lines[root_line : root_line + 3])
    estimate = result.time_to_healthy
    assert estimate is not None
    assert f"time to healthy  ~{human_seconds(estimate.estimate_s)} " in text
    # 3.5 s of steps (snapshot-previous, stop-flux, start-service, the last probe) + 90 s install
    # + 5.5 s load + 6.5 s warm-up
    assert human_seconds(estimate.estimate_s) == "1 min 45 s"
    assert "steps 3.5 s: snapshot-previous, stop-flux, start-service and the last health probe" in text
    assert "(sync | install side by side, then load and warm-up)" in text
    assert "transfer 12.8 s: 15.0 GiB at 1.2 GiB/s (link 1.2 GiB/s, disk writes 1.9 GiB/s measured)" in text
    assert "install 1 min 30 s: builds the venv, downloading 16 packages" in text
    assert "load 5.5 s: 15.0 GiB from disk at 2.7 GiB/s" in text
    assert "warm-up 6.5 s: the transformers engine's start" in text
    # A plan recorded before the estimate renders without one
    older = result.model_copy(update={"time_to_healthy": None, "models_root_reason": ""})
    assert "time to healthy  - (not estimated by this plan)" in plan_table(older)


def test_models_roots_and_link_gbps_are_context_keys() -> None:
    from stacks.config import ConfigError, load_config

    base = {"instance_ids": "i-0123456789abcdef0", "model_bucket": "asoba-llm-cache"}
    # `-c models_roots=/a,/b` and `-c link_gbps=5` arrive as strings
    config = load_config({**base, "models_roots": f"{NVME},{EBS}", "link_gbps": "5"}.get)
    assert config.models_roots == [NVME, EBS] and config.link_gbps == 5.0
    assert config.candidate_models_roots == [NVME, EBS]
    assert Policy.from_config(config).link_bytes_per_s == 5e9 / 8
    # Default: the configured models root alone, and a g5's 10 Gbps
    default = load_config(base.get)
    assert default.candidate_models_roots == ["/opt/models"] and default.link_gbps == 10.0
    # A relative path (or one with shell characters) names the key
    for bad in ("models,/opt/models", "/opt/models;id"):
        with pytest.raises(ConfigError, match=r"context key 'models_roots\.\d'"):
            load_config({**base, "models_roots": bad}.get)
    with pytest.raises(ConfigError, match="context key 'models_roots'"):
        load_config({**base, "models_roots": ",".join(f"/r{i}" for i in range(9))}.get)
