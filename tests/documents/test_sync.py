"""sync: the model's S3 prefix mirrored into ModelsRoot/ModelName over HTTP (moto server)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asoba_deploy.core.steps import SYNC_MARKER
from local.sandbox import DocumentRun, Sandbox, run_document
from tests.fixtures import Aws

MODEL = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b'{"version": "1.0"}' * 50,
    "model-00001-of-00002.safetensors": os.urandom(300_000),
    "model-00002-of-00002.safetensors": os.urandom(120_000),
    "extra/notes.txt": b"nested files sync too\n",
}


def upload_model(aws: Aws, prefix: str, files: dict[str, bytes]) -> str:
    for name, data in files.items():
        aws.s3.put_object(Bucket=aws.bucket, Key=f"{prefix}/{name}", Body=data)
    return f"s3://{aws.bucket}/{prefix}/"


def local_files(folder: Path) -> dict[str, bytes]:
    """The model's files, the sync's completion marker aside (test_the_marker_... checks it)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SYNC_MARKER
    }


def progress_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith('{"progress"')]
    return [line["progress"] for line in lines]


def test_the_marker_names_the_execution_and_goes_first_and_progress_is_reported(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a model of a few shards in S3, synced once by exec-a
    sandbox = make_sandbox()
    files = {**MODEL, **{f"big-{n}.safetensors": os.urandom(8_000_000) for n in range(3)}}
    source = upload_model(aws, "models/big", files)
    total = sum(map(len, files.values()))
    marker = sandbox.models_root / "big" / SYNC_MARKER
    first = run_document(aws.ssm, sandbox, "sync", ModelName="big", SourceUri=source, ExecutionName="exec-a")
    assert first.status == "Success", first.explain()
    assert marker.read_text() == "exec-a\n"

    # Then while it downloaded it said how far it was, on stderr (the command-output log group
    # gets it too): bytes on disk of the folder's total, never more, with rate and ETA
    progress = progress_lines(first.stderr)
    assert progress, first.stderr
    for line in progress:
        assert (line["step"], line["model"], line["total_bytes"]) == ("sync", "big", total)
        assert 0 <= line["bytes"] <= total and line["rate"] >= 0
        assert line["eta_s"] is None or line["eta_s"] >= 0
    assert [line["bytes"] for line in progress] == sorted(line["bytes"] for line in progress)
    # and the result line stays the last stdout line, alone
    assert first.stdout.strip().count("\n") == 0

    # When exec-b syncs the same folder and fails (a key it refuses appeared under the prefix)
    aws.s3.put_object(Bucket=aws.bucket, Key="models/big/extra/../../escape", Body=b"x")
    failed = run_document(aws.ssm, sandbox, "sync", ModelName="big", SourceUri=source, ExecutionName="exec-b")

    # Then the folder has no marker: exec-a's went first, and exec-b's is written only on success
    assert failed.status == "Failed", failed.explain()
    assert not marker.exists()
    aws.s3.delete_object(Bucket=aws.bucket, Key="models/big/extra/../../escape")

    # And a re-sync that moves nothing still counts the marker as no file of the model's
    again = run_document(aws.ssm, sandbox, "sync", ModelName="big", SourceUri=source, ExecutionName="exec-c")
    assert again.status == "Success", again.explain()
    assert again.result is not None and again.result["files_total"] == len(files)
    assert marker.read_text() == "exec-c\n"


@pytest.mark.parametrize("tool", ["s5cmd", "aws"])
def test_sync_downloads_once_then_moves_nothing(
    tool: str, aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a model folder in S3 (and a neighbour prefix that must not leak in), on an image
    # that has the AWS CLI when the aws path is tested (a fresh one has none)
    sandbox = make_sandbox(aws_cli=tool == "aws")
    source = upload_model(aws, "models/tiny-model", MODEL)
    upload_model(aws, "models/tiny-model-2", {"config.json": b"{}"})
    total = sum(len(data) for data in MODEL.values())

    # When sync runs
    first = run_document(aws.ssm, sandbox, "sync", ModelName="tiny-model", SourceUri=source, Tool=tool)

    # Then the folder is an exact copy and the report says what moved
    assert first.status == "Success", first.explain()
    assert local_files(sandbox.models_root / "tiny-model") == MODEL
    assert first.result is not None
    assert {
        k: first.result[k]
        for k in (
            "ok",
            "tool",
            "files_total",
            "total_bytes",
            "files_transferred",
            "bytes_transferred",
            "files_deleted",
        )
    } == {
        "ok": True,
        "tool": tool,
        "files_total": 5,
        "total_bytes": total,
        "files_transferred": 5,
        "bytes_transferred": total,
        "files_deleted": 0,
    }
    assert first.result["destination"] == str(sandbox.models_root / "tiny-model")
    assert first.result["seconds"] >= 0

    # When it runs again on the unchanged model
    second = run_document(aws.ssm, sandbox, "sync", ModelName="tiny-model", SourceUri=source, Tool=tool)

    # Then nothing is transferred
    assert second.status == "Success", second.explain()
    assert second.result is not None
    assert (second.result["files_transferred"], second.result["bytes_transferred"]) == (0, 0)
    assert second.result["total_bytes"] == total


def test_sync_follows_changes_in_s3(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given a synced model whose S3 copy then changes: one shard rewritten, one file gone, one new
    sandbox = make_sandbox()
    source = upload_model(aws, "models/changing", MODEL)
    assert run_document(aws.ssm, sandbox, "sync", ModelName="changing", SourceUri=source).status == "Success"
    changed = dict(MODEL)
    changed["model-00002-of-00002.safetensors"] = os.urandom(150_000)
    del changed["extra/notes.txt"]
    aws.s3.delete_object(Bucket=aws.bucket, Key="models/changing/extra/notes.txt")
    changed["generation_config.json"] = b'{"max_new_tokens": 64}'
    upload_model(
        aws,
        "models/changing",
        {k: changed[k] for k in ("model-00002-of-00002.safetensors", "generation_config.json")},
    )

    run = run_document(aws.ssm, sandbox, "sync", ModelName="changing", SourceUri=source)

    # Then only the changes move, and the copy matches S3 exactly
    assert run.status == "Success", run.explain()
    assert local_files(sandbox.models_root / "changing") == changed
    assert run.result is not None
    assert (
        run.result["files_transferred"],
        run.result["bytes_transferred"],
        run.result["files_deleted"],
    ) == (2, 150_000 + len(changed["generation_config.json"]), 1)


def test_a_folder_that_changed_since_the_plan_fails_before_any_byte_moves(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given the plan counted the model's files, and one file then vanished from S3
    sandbox = make_sandbox()
    source = upload_model(aws, "models/vanishing", MODEL)
    files, size = len(MODEL), sum(map(len, MODEL.values()))
    aws.s3.delete_object(Bucket=aws.bucket, Key="models/vanishing/extra/notes.txt")
    left = sum(len(data) for name, data in MODEL.items() if name != "extra/notes.txt")

    def sync(expect_files: int, expect_bytes: int) -> DocumentRun:
        return run_document(
            aws.ssm,
            sandbox,
            "sync",
            ModelName="vanishing",
            SourceUri=source,
            ExecutionName="exec-a",
            ExpectFiles=expect_files,
            ExpectBytes=expect_bytes,
        )

    run = sync(files, size)

    # Then it fails naming both counts, nothing was downloaded and no marker says complete (what
    # start-service and evict wait for)
    assert (run.status, run.result) == (
        "Failed",
        {
            "ok": False,
            "error": f"the model folder changed in S3 after it was planned: planned {files} files, "
            f"{size} bytes; listed {files - 1} files, {left} bytes",
        },
    )
    assert local_files(sandbox.models_root / "vanishing") == {}
    assert not (sandbox.models_root / "vanishing" / SYNC_MARKER).exists()

    # And the same counts as S3's pass
    run = sync(files - 1, left)
    assert run.status == "Success", run.explain()
    assert (sandbox.models_root / "vanishing" / SYNC_MARKER).read_text() == "exec-a\n"


def test_an_empty_prefix_is_a_clear_failure(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    run = run_document(
        aws.ssm, sandbox, "sync", ModelName="ghost", SourceUri=f"s3://{aws.bucket}/models/ghost/"
    )
    assert (run.status, run.result) == (
        "Failed",
        {"ok": False, "error": f"no objects under s3://{aws.bucket}/models/ghost/"},
    )
    assert not (sandbox.models_root / "ghost").exists()


def test_an_unreachable_bucket_is_a_clear_failure(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    run = run_document(aws.ssm, sandbox, "sync", ModelName="m", SourceUri="s3://no-such-bucket-here/m/")
    assert run.status == "Failed"
    assert run.result is not None and run.result["error"].startswith(
        "cannot list s3://no-such-bucket-here/m/"
    )


ADAPTER = {
    "adapter_config.json": b'{"peft_type": "LORA", "base_model_name_or_path": "org/Tiny-Base"}',
    "adapter_model.safetensors": os.urandom(40_000),
}


def test_an_adapters_base_is_synced_too_and_not_again_when_unchanged(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given an adapter and its base model as two folders in S3
    sandbox = make_sandbox()
    base_source = upload_model(aws, "models/tiny-base", MODEL)
    source = upload_model(aws, "models/tiny-lora", ADAPTER)
    both: dict[str, Any] = {
        "ModelName": "tiny-lora",
        "SourceUri": source,
        "BaseModelName": "tiny-base",
        "BaseSourceUri": base_source,
    }
    base_bytes, adapter_bytes = sum(map(len, MODEL.values())), sum(map(len, ADAPTER.values()))

    # When sync runs with the base
    first = run_document(aws.ssm, sandbox, "sync", **both)

    # Then both folders are exact copies, and the result reports each
    assert first.status == "Success", first.explain()
    assert local_files(sandbox.models_root / "tiny-lora") == ADAPTER
    assert local_files(sandbox.models_root / "tiny-base") == MODEL
    assert first.result is not None
    counts = (
        "model",
        "files_total",
        "total_bytes",
        "files_transferred",
        "bytes_transferred",
        "files_deleted",
    )
    assert [first.result[k] for k in counts] == ["tiny-lora", 2, adapter_bytes, 2, adapter_bytes, 0]
    base = first.result["base"]
    assert [base[k] for k in counts] == ["tiny-base", 5, base_bytes, 5, base_bytes, 0]
    assert base["destination"] == str(sandbox.models_root / "tiny-base")
    assert base["source"] == base_source

    # When it runs again on the unchanged folders
    second = run_document(aws.ssm, sandbox, "sync", **both)

    # Then nothing moves, for either
    assert second.status == "Success", second.explain()
    assert second.result is not None
    assert (second.result["files_transferred"], second.result["bytes_transferred"]) == (0, 0)
    assert (second.result["base"]["files_transferred"], second.result["base"]["bytes_transferred"]) == (0, 0)
    assert second.result["base"]["total_bytes"] == base_bytes

    # When one of the base's shards changes in S3
    shard = os.urandom(130_000)
    upload_model(aws, "models/tiny-base", {"model-00002-of-00002.safetensors": shard})
    third = run_document(aws.ssm, sandbox, "sync", **both)

    # Then only that file moves
    assert third.status == "Success", third.explain()
    assert third.result is not None
    assert (third.result["base"]["files_transferred"], third.result["base"]["bytes_transferred"]) == (
        1,
        len(shard),
    )
    assert third.result["files_transferred"] == 0
    assert local_files(sandbox.models_root / "tiny-base") == {
        **MODEL,
        "model-00002-of-00002.safetensors": shard,
    }


def test_a_model_without_a_base_reports_none(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    source = upload_model(aws, "models/plain", {"config.json": b"{}"})
    run = run_document(aws.ssm, sandbox, "sync", ModelName="plain", SourceUri=source)
    assert run.status == "Success", run.explain()
    assert run.result is not None and run.result["base"] is None
    assert sorted(p.name for p in sandbox.models_root.iterdir()) == ["plain"]


@pytest.mark.parametrize(
    ("base", "error"),
    [
        ({"BaseModelName": "tiny-base"}, "BaseModelName and BaseSourceUri go together"),
        ({"BaseSourceUri": "s3://bkt/models/tiny-base/"}, "BaseModelName and BaseSourceUri go together"),
        (
            {"BaseModelName": "tiny-lora", "BaseSourceUri": "s3://bkt/models/tiny-base/"},
            "the base model folder must not be the model's own: tiny-lora",
        ),
        (
            {"BaseModelName": "a..b", "BaseSourceUri": "s3://bkt/models/tiny-base/"},
            "base model name must not contain '..': a..b",
        ),
    ],
)
def test_a_base_that_cannot_be_right_is_refused_before_anything_moves(
    base: dict[str, Any], error: str, aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    sandbox = make_sandbox()
    source = upload_model(aws, "models/tiny-lora", ADAPTER)
    run = run_document(aws.ssm, sandbox, "sync", ModelName="tiny-lora", SourceUri=source, **base)
    assert (run.status, run.result) == ("Failed", {"ok": False, "error": error})
    assert not (sandbox.models_root / "tiny-lora").exists()


def test_a_fresh_image_syncs_with_the_s5cmd_the_agent_brought(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # No aws CLI and no s5cmd on PATH: the document's first step fetched the stack's s5cmd.
    sandbox = make_sandbox()
    source = upload_model(aws, "models/fresh", MODEL)
    run = run_document(aws.ssm, sandbox, "sync", ModelName="fresh", SourceUri=source)
    assert run.status == "Success", run.explain()
    assert run.result is not None and run.result["tool"] == "s5cmd", run.explain()
    assert (sandbox.runtime_root / "tools" / "s5cmd").is_file()
    # Told to use the aws CLI, which this image lacks: a clear failure, nothing synced.
    refused = run_document(aws.ssm, sandbox, "sync", ModelName="fresh-aws", SourceUri=source, Tool="aws")
    refused_error = "Tool=aws: the aws CLI is not installed and no s5cmd runs here"
    assert refused.result == {"ok": False, "error": refused_error}, refused.explain()
    assert not (sandbox.models_root / "fresh-aws").exists()


def test_sync_fails_at_the_fetch_when_s5cmd_cannot_be_read(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # The agent's download failing (here: no such object) ends the document before the script.
    sandbox = make_sandbox()
    sandbox.s5cmd_uri = f"https://s3.us-west-2.amazonaws.com/{aws.bucket}/tools/missing"
    source = upload_model(aws, "models/nofetch", MODEL)
    run = run_document(aws.ssm, sandbox, "sync", ModelName="nofetch", SourceUri=source)
    assert run.status == "Failed" and run.stdout == "", run.explain()
    assert run.other_steps[0][:2] == ("bringS5cmd", "Failed") and "NoSuchKey" in run.other_steps[0][2]
    assert not (sandbox.models_root / "nofetch").exists()
