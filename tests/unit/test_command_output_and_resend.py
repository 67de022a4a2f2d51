"""SSM commands as AWS runs them: a cut stdout is a clear error, output stays out of the state
except in a failure's cause, and a retried send sends nothing twice (moto's SSM)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from asoba_deploy.core.commands import STDOUT_LIMIT, TRUNCATED_SUFFIX, CommandRef, poll, send
from asoba_deploy.core.errors import CollectResourcesFailed, SyncFailed
from tests.unit.test_commands import REF, FakeSsm

INSTANCE = "i-0123456789abcdef0"


def cut(stdout: str) -> str:
    # amazon-ssm-agent's pluginutil.StringPrefix(stdout, 24000, "--output truncated--")
    return stdout[: STDOUT_LIMIT - len(TRUNCATED_SUFFIX)] + TRUNCATED_SUFFIX


@pytest.mark.parametrize("marker", [TRUNCATED_SUFFIX, "\n---Output truncated---"])
def test_a_truncated_result_line_is_a_clear_error(marker: str) -> None:
    line = '{"ok": true, "cached_models": [' + ", ".join(['{"name": "m", "bytes": 1}'] * 2000) + "]}"
    stdout = cut(line + "\n") if marker == TRUNCATED_SUFFIX else line[:23000] + marker
    ssm = FakeSsm({"Status": "Success", "StandardOutputContent": stdout})
    with pytest.raises(CollectResourcesFailed, match="output truncated by SSM at 24,000 characters"):
        poll(ssm, REF, now=150.0, error=CollectResourcesFailed)


def test_a_finished_command_keeps_no_output_in_the_state() -> None:
    ssm = FakeSsm({"Status": "Success", "StandardOutputContent": "x" * 20000 + '\n{"ok": true}\n'})
    ref = poll(ssm, REF, now=150.0, error=SyncFailed)
    dumped = ref.model_dump_json()
    assert ref.result == {"ok": True} and len(dumped) < 1000, dumped


def test_a_failed_command_carries_its_output_tail_in_the_cause() -> None:
    stderr = "".join(f"line {i}\n" for i in range(1000)) + "s5cmd: access denied\n"
    ssm = FakeSsm({"Status": "Failed", "StatusDetails": "Failed", "StandardErrorContent": stderr})
    with pytest.raises(SyncFailed) as raised:
        poll(ssm, REF, now=150.0, error=SyncFailed)
    cause = str(raised.value)
    assert "s5cmd: access denied" in cause and "line 999" in cause and "line 10\n" not in cause
    assert len(cause) < 2000


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SSM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("ssm", region_name="us-west-2")


def send_sync(ssm: Any, comment: str, now: float, previous: CommandRef | None = None) -> CommandRef:
    return send(
        ssm,
        step="sync",
        document="AWS-RunShellScript",
        instance_id=INSTANCE,
        parameters={"commands": "true"},
        timeout_seconds=600,
        now=now,
        comment=comment,
        previous=previous,
        idempotent=True,
    )


def test_sending_twice_for_one_execution_and_step_sends_one_command(ssm: Any) -> None:
    import time

    now = time.time()
    first = send_sync(ssm, "sync#1 exec-a", now)
    # the Lambda is retried after its SendCommand went through
    again = send_sync(ssm, "sync#1 exec-a", now + 3)
    assert again.command_id == first.command_id
    assert len(ssm.list_commands(InstanceId=INSTANCE)["Commands"]) == 1
    # another execution, or the next attempt of a resent step, is a command of its own
    other = send_sync(ssm, "sync#1 exec-b", now + 4)
    resent = send_sync(ssm, "sync#2 exec-a", now + 5, previous=first.model_copy(update={"status": "Resend"}))
    assert len({first.command_id, other.command_id, resent.command_id}) == 3
    assert resent.attempt == 2 and resent.deadline == first.deadline
    assert len(ssm.list_commands(InstanceId=INSTANCE)["Commands"]) == 3
