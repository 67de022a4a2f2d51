"""A model of many files keeps every state of its execution under 256 KiB: the state's plan
lists its first files by name and counts them all; finished commands keep no output."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.ledger import build_record
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.planner.models import PLAN_FILES_LISTED, PlanFile
from asoba_deploy.core.state import ExecutionState
from asoba_deploy.core.steps import STEPS, check_sync, sync_expectation
from lambdas.handlers import plan as plan_handler
from local.limits import STATE_PAYLOAD_BYTES
from tests.unit.conftest import SeedBucket
from tests.unit.planner_support import seed_snapshot
from tests.unit.test_steps import CONFIG

FILES = 2000


def many_files_plan(seed_bucket: SeedBucket) -> Plan:
    """qwen3-14b's plan as if its folder held 2,000 files (e.g. a sharded checkpoint)."""
    event = {"request": {"model": "qwen3-14b"}, "snapshot": seed_snapshot().model_dump(mode="json")}
    planned = plan_handler.plan_event(event, seed_bucket.client, CONFIG)
    prefix = planned["source_uri"].split("/", 3)[3]
    files = [
        PlanFile(
            key=f"{prefix}model-{i:05d}-of-{FILES:05d}.safetensors",
            bytes=1_000_000 + i,
            local_path=f"/opt/models/qwen3-14b/model-{i:05d}-of-{FILES:05d}.safetensors",
            cached=i % 3 == 0,
        ).model_dump()
        for i in range(FILES)
    ]
    skipped = [f"{prefix}original/consolidated-{i:04d}.pth" for i in range(300)]
    full: dict[str, Any] = {
        key: value
        for key, value in planned.items()
        if key not in ("file_count", "cached_bytes", "skipped_count", "source_files", "source_bytes")
    }
    full |= {"files": files, "skipped_files": skipped, "skipped_bytes": 300 * 5000}
    return Plan.model_validate(full)


def command(step: str, result: dict[str, Any]) -> CommandRef:
    return CommandRef(
        step=step, document=step, command_id="c" * 36, instance_id="i-0123456789abcdef0",
        sent_at=1.0, first_sent_at=1.0, deadline=9.0, status="Success", result=result,
    )  # fmt: skip


def test_the_state_of_a_2000_file_model_stays_under_256_kib(seed_bucket: SeedBucket) -> None:
    full = many_files_plan(seed_bucket)
    assert len(json.dumps(full.model_dump(mode="json")).encode()) > STATE_PAYLOAD_BYTES  # the defect
    listed = Plan.model_validate(full.listed().model_dump(mode="json"))  # what the Plan Lambda returns
    assert len(listed.files) == PLAN_FILES_LISTED and listed.file_count == FILES
    assert listed.skipped_count == 300 and listed.cached_bytes == full.cached_bytes > 0

    snapshot = seed_snapshot().model_dump(mode="json")
    state = ExecutionState(
        request=DeployRequest(model="qwen3-14b"),
        instance_id="i-0123456789abcdef0",
        execution="arn:aws:states:us-west-2:123456789012:execution:m:e",
        plan=listed,
        steps={
            "collect_resources": command("collect_resources", snapshot),
            "snapshot_previous": command("snapshot_previous", {"ok": True}),
            "sync": command("sync", {"ok": True, "files_total": FILES + 300}),
        },
        command=command("install", {"ok": True}),
    )
    dumped = state.model_dump(mode="json")
    assert len(json.dumps(dumped).encode()) < 64 * 1024
    record = build_record(state, "succeeded", instance_type="g5.4xlarge", now=datetime.now(UTC))
    assert len(record.model_dump_json().encode()) < 64 * 1024  # $.record, and the ledger item

    # the sync expectation still counts every file, from the counts made at plan time
    expect = sync_expectation(CONFIG, state)
    assert expect == {
        "files": FILES + 300,
        "bytes": sum(f.bytes for f in full.files) + 300 * 5000,
    }
    assert expect == sync_expectation(CONFIG, state.model_copy(update={"plan": full}))
    check_sync({"files_total": FILES + 300, "total_bytes": expect["bytes"]}, expect)
    assert STEPS["sync"].instance is not None
