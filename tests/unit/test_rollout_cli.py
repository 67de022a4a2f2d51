"""`deploy-model <model> --instances a,b,c | --tag k=v`: options, the request, progress rows, the table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from asoba_deploy.cli.fleet import FleetProgress, fleet_request, rollout_table
from asoba_deploy.cli.main import build_parser, main, normalize_argv
from asoba_deploy.core import rollout
from asoba_deploy.core.errors import InvalidInput

A, B = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2"


def test_fleet_options_parse_and_make_the_request() -> None:
    argv = ["tiny", "--instances", f"{A}, {B}", "--max-concurrency", "2", "--tolerated-failures", "50%"]
    options = build_parser().parse_args(normalize_argv(argv))
    payload = fleet_request(
        {"model": "tiny"},
        instances=options.instances,
        tag=options.tag,
        max_concurrency=options.max_concurrency,
        tolerated_failures=options.tolerated_failures,
    )
    assert payload == {
        "model": "tiny",
        "instances": [A, B],
        "max_concurrency": 2,
        "tolerated_failures": "50%",
    }
    by_tag = fleet_request(
        {"model": "tiny"}, instances=None, tag="fleet=blue", max_concurrency=None, tolerated_failures="1"
    )
    assert by_tag == {
        "model": "tiny",
        "instance_tag": {"key": "fleet", "value": "blue"},
        "tolerated_failures": 1,
    }


@pytest.mark.parametrize(
    ("instances", "tag", "tolerated", "message"),
    [
        (f"{A},{A}", None, None, "more than once"),
        (None, "no-equals-sign", None, "key=value"),
        (A, None, "-1", "tolerated_failures"),
    ],
)
def test_a_bad_fleet_is_refused_before_anything_starts(
    instances: str | None, tag: str | None, tolerated: str | None, message: str
) -> None:
    with pytest.raises((InvalidInput, ValueError), match=message):
        fleet_request(
            {"model": "tiny"},
            instances=instances,
            tag=tag,
            max_concurrency=None,
            tolerated_failures=tolerated,
        )


def test_instances_and_tag_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tiny", "--instances", A, "--tag", "k=v"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def _entered(name: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"stateEnteredEventDetails": {"name": name, "input": json.dumps(state)}}


def _exited(name: str, output: dict[str, Any]) -> dict[str, Any]:
    return {"stateExitedEventDetails": {"name": name, "output": json.dumps(output)}}


def test_each_instance_gets_its_own_progress_rows() -> None:
    lines: list[str] = []
    progress = FleetProgress(lines.append)
    failed = rollout.InstanceRow(instance_id=B, outcome="failed", error="InstallFailed").model_dump()
    for event in [
        _entered("ValidateInput", {"model": "tiny"}),  # no instance yet: no row
        _entered("AcquireLock", {"instance_id": A}),
        _entered("AcquireLock", {"instance_id": B}),
        _entered("CollectResources", {"instance_id": A}),
        _entered("CollectResources", {"instance_id": A}),  # the same state again: no new line
        _exited("CountFailure", failed),
        _entered("ReleaseLockAfterFailure", {"instance_id": B}),  # after its row: the row stays
    ]:
        progress.feed(event)
    assert lines == [
        f"{A}  AcquireLock",
        f"{B}  AcquireLock",
        f"{A}  CollectResources",
        f"{B}  failed  InstallFailed",
    ]


def test_the_table_has_a_row_per_instance() -> None:
    plan = rollout.plan_rollout(2, 2, 0, False, fleet=True)
    rows = [
        rollout.done_row(A, True, {"fits": True, "action": "coexist", "summary": "fits"}),
        rollout.not_started_row(B, 1, plan),
    ]
    text = rollout_table(rollout.summarize(rows, plan, dry_run=True))
    assert (
        text.splitlines()[0]
        == "rollout succeeded: 1 not-started, 1 planned (0 failure(s) tolerated, 2 at a time)"
    )
    assert any(line.split()[:4] == [A, "planned", "coexist", "fits"] for line in text.splitlines())
    assert any(line.split()[:2] == [B, "not-started"] for line in text.splitlines())
