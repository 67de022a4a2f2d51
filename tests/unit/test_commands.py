"""Following an SSM invocation: statuses, deadlines, results and the command's own clock."""

from __future__ import annotations

from typing import Any

import pytest

from asoba_deploy.core.commands import CommandRef, InvocationDoesNotExist, last_json_line, poll
from asoba_deploy.core.errors import InstanceUnavailable, SyncFailed


class FakeSsm:
    def __init__(self, invocation: dict[str, Any] | Exception) -> None:
        self.invocation = invocation
        self.cancelled: list[str] = []

    def get_command_invocation(self, **_: Any) -> dict[str, Any]:
        if isinstance(self.invocation, Exception):
            raise self.invocation
        return self.invocation

    def cancel_command(self, CommandId: str, **_: Any) -> None:
        self.cancelled.append(CommandId)


REF = CommandRef(
    step="sync",
    document="sync",
    command_id="c-1",
    instance_id="i-0123456789abcdef0",
    sent_at=100.0,
    first_sent_at=100.0,
    deadline=200.0,
)


def test_success_carries_the_last_json_line_and_the_command_end_time() -> None:
    ssm = FakeSsm(
        {
            "Status": "Success",
            "StandardOutputContent": 'progress\n{"ok": true, "bytes_transferred": 5}\n',
            "ExecutionEndDateTime": "2026-11-26T22:00:00.500000+00:00",
        }
    )
    ref = poll(ssm, REF, now=150.0, error=SyncFailed)
    assert ref.status == "Success"
    assert ref.result == {"ok": True, "bytes_transferred": 5}
    assert ref.finished_at == pytest.approx(1795730400.5)
    assert ref.seen_at == 150.0


def test_running_past_the_deadline_is_cancelled_and_fails_with_the_step_error() -> None:
    ssm = FakeSsm({"Status": "InProgress"})
    assert poll(ssm, REF, now=150.0, error=SyncFailed).status == "InProgress"
    with pytest.raises(
        SyncFailed, match=r"did not finish within its step budget of 100 s .*still InProgress after 150 s"
    ):
        poll(ssm, REF, now=250.0, error=SyncFailed)
    assert ssm.cancelled == ["c-1"]


def test_never_delivered_is_instance_unavailable() -> None:
    ssm = FakeSsm({"Status": "TimedOut", "StatusDetails": "DeliveryTimedOut"})
    with pytest.raises(InstanceUnavailable, match="DeliveryTimedOut"):
        poll(ssm, REF, now=150.0, error=SyncFailed)


def test_failure_reason_comes_from_the_json_error_line() -> None:
    ssm = FakeSsm(
        {
            "Status": "Failed",
            "StandardOutputContent": '{"ok": false, "error": "s5cmd: access denied"}\n',
            "StandardErrorContent": "noise\n",
        }
    )
    with pytest.raises(SyncFailed, match="s5cmd: access denied"):
        poll(ssm, REF, now=150.0, error=SyncFailed)


def test_unregistered_invocation_is_retried_by_its_own_name() -> None:
    from botocore.exceptions import ClientError

    error = ClientError(
        {"Error": {"Code": "InvocationDoesNotExist", "Message": "no"}}, "GetCommandInvocation"
    )
    with pytest.raises(InvocationDoesNotExist):
        poll(FakeSsm(error), REF, now=150.0, error=SyncFailed)


def test_last_json_line_ignores_other_output() -> None:
    assert last_json_line("a\n{not json\n") is None
    assert last_json_line('{"a": 1}\nplain text after\n') == {"a": 1}


def test_a_command_the_agent_timed_out_says_its_execution_timeout_ended_it() -> None:
    ssm = FakeSsm(
        {"Status": "TimedOut", "StatusDetails": "ExecutionTimedOut", "StandardOutputContent": "copying\n"}
    )
    with pytest.raises(SyncFailed, match=r"timed out .*killed it at its executionTimeout \(exit 137\)"):
        poll(ssm, REF, now=150.0, error=SyncFailed)


class PluginSsm(FakeSsm):
    """GetCommandInvocation per step of a document with several (PluginName required)."""

    def __init__(self, by_plugin: dict[str, dict[str, Any]]) -> None:
        super().__init__({})
        self.by_plugin = by_plugin
        self.asked: list[str] = []

    def get_command_invocation(self, **kwargs: Any) -> dict[str, Any]:
        self.asked.append(kwargs["PluginName"])
        return self.by_plugin[kwargs["PluginName"]]


TWO_STEPS = REF.model_copy(update={"plugins": ["bringS5cmd", "sync"]})


def test_a_failed_fetch_before_the_script_is_the_steps_failure() -> None:
    ssm = PluginSsm(
        {
            "bringS5cmd": {"Status": "Failed", "StandardErrorContent": "AccessDenied: not authorized\n"},
            "sync": {"Status": "Skipped", "StatusDetails": "Skipped"},
        }
    )
    with pytest.raises(SyncFailed, match=r"failed on i-0123456789abcdef0 at step bringS5cmd: AccessDenied"):
        poll(ssm, TWO_STEPS, now=150.0, error=SyncFailed)
    assert ssm.asked == ["sync", "bringS5cmd"]


def test_a_command_never_delivered_is_the_instance_not_its_first_step() -> None:
    # Every step of an undelivered command reads TimedOut/DeliveryTimedOut: no step failed.
    undelivered = {"Status": "TimedOut", "StatusDetails": "DeliveryTimedOut"}
    ssm = PluginSsm({"bringS5cmd": undelivered, "sync": undelivered})
    with pytest.raises(InstanceUnavailable, match="did not answer"):
        poll(ssm, TWO_STEPS, now=150.0, error=SyncFailed)
