"""The rollback's first move: cancel this execution's commands still running on the instance (a
parallel branch beside the failed one), and no other execution's, and nothing that ended."""

from __future__ import annotations

from typing import Any

from asoba_deploy.core.commands import cancel_in_flight


class FakeSsm:
    def __init__(self, commands: list[dict[str, Any]]) -> None:
        self.commands = commands
        self.cancelled: list[str] = []
        self.filters: list[list[dict[str, str]]] = []

    def list_commands(self, **request: Any) -> dict[str, Any]:
        self.filters.append(request["Filters"])
        assert request["InstanceId"] == "i-0123456789abcdef0"
        half = len(self.commands) // 2
        if "NextToken" not in request:  # two pages
            return {"Commands": self.commands[:half], "NextToken": "page-2"}
        return {"Commands": self.commands[half:]}

    def cancel_command(self, CommandId: str, InstanceIds: list[str]) -> None:
        self.cancelled.append(CommandId)


def test_only_this_execution_s_running_commands_are_cancelled() -> None:
    ssm = FakeSsm(
        [
            {"CommandId": "sync", "Comment": "sync#1 deploy-a", "Status": "Success"},
            {"CommandId": "install", "Comment": "install#1 deploy-a", "Status": "InProgress"},
            {"CommandId": "other", "Comment": "install#1 deploy-a-2", "Status": "InProgress"},
            {"CommandId": "pending", "Comment": "health-check#2 deploy-a", "Status": "Pending"},
            {"CommandId": "ended", "Comment": "stop-flux#1 deploy-a", "Status": "Cancelled"},
        ]
    )
    cancelled = cancel_in_flight(ssm, instance_id="i-0123456789abcdef0", execution_name="deploy-a", since=0.0)
    assert cancelled == ssm.cancelled == ["install", "pending"]
    # SSM is asked for the running ones only, since the execution started (moto ignores it)
    assert {f["value"] for filters in ssm.filters for f in filters if f["key"] == "Status"} == {
        "Pending",
        "InProgress",
    }
    assert all(any(f["key"] == "InvokedAfter" for f in filters) for filters in ssm.filters)
