"""checkov on the synthesized template: zero failed checks; every skip says why.

checkov runs from its own venv (build/checkov-venv, `make setup`): its pins clash with the
dev venv's (requirements-checkov.txt says which).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from local.stack import PROJECT_ROOT, Synthesized, synthesize

CHECKOV = PROJECT_ROOT / "build" / "checkov-venv" / "bin" / "checkov"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(tmp_path_factory.mktemp("checkov") / "cdk.out")


def _scan(template: Path) -> dict[str, Any]:
    assert CHECKOV.is_file(), f"{CHECKOV} is missing: run `make setup` (it builds checkov's venv)"
    run = subprocess.run(
        [str(CHECKOV), "--framework", "cloudformation", "--skip-download", "-o", "json", "-f", str(template)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.stdout.strip(), run.stderr[-4000:]
    report = json.loads(run.stdout)
    return dict(report[0] if isinstance(report, list) else report)


def test_checkov_finds_nothing_unacknowledged(synth: Synthesized) -> None:
    report = _scan(synth.outdir / "AsobaModelDeploy.template.json")
    failed = [(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0
    for skipped in report["results"]["skipped_checks"]:
        assert str(skipped["check_result"].get("suppress_comment") or "").strip(), skipped["check_id"]


def test_every_checkov_skip_in_the_template_has_a_comment(synth: Synthesized) -> None:
    skips = [
        (name, skip)
        for name, resource in synth.template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for name, skip in skips:
        assert skip["id"].startswith("CKV_"), name
        assert len(skip.get("comment", "").strip()) > 20, (name, skip)


def test_the_log_groups_are_encrypted_with_the_stacks_rotating_key(synth: Synthesized) -> None:
    resources = synth.template["Resources"]
    groups = {k: v for k, v in resources.items() if v["Type"] == "AWS::Logs::LogGroup"}
    assert groups
    keys = {json.dumps(g["Properties"]["KmsKeyId"]) for g in groups.values()}
    assert len(keys) == 1
    key_id = json.loads(keys.pop())["Fn::GetAtt"][0]
    key = resources[key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    logs_statement = next(
        s
        for s in key["KeyPolicy"]["Statement"]
        if s.get("Principal", {}).get("Service") == "logs.us-west-2.amazonaws.com"
    )
    assert "kms:EncryptionContext:aws:logs:arn" in logs_statement["Condition"]["ArnLike"]
