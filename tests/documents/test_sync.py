"""sync: the model's S3 prefix mirrored into ModelsRoot/ModelName over HTTP (moto server)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from local.sandbox import Sandbox, run_document
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
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("tool", ["s5cmd", "aws"])
def test_sync_downloads_once_then_moves_nothing(
    tool: str, aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a model folder in S3 (and a neighbour prefix that must not leak in)
    sandbox = make_sandbox()
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
