"""The pure core of event-driven completion: token table, await, completer (core/completion.py).

DynamoDB is moto's (its conditional delete decides who wins); SSM and Step Functions are fakes
that record what they were asked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from asoba_deploy.core import completion
from asoba_deploy.core.commands import AWAIT_GRACE_SECONDS, CommandRef, await_timeout
from asoba_deploy.core.completion import DETAIL_TYPE, TokenTable, await_command, on_status_event
from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.settings import Settings
from asoba_deploy.core.steps import STEPS

A, B = "i-0123456789abcdef0", "i-0fedcba9876543210"
CONFIG = Settings(deploy=DeployConfig(instance_ids=[A, B], model_bucket="models"))
SYNC = STEPS["sync"]


class FakeSsm:
    """Invocations by (command id, instance id)."""

    def __init__(self) -> None:
        self.invocations: dict[tuple[str, str], dict[str, Any]] = {}

    def set(self, command_id: str, instance_id: str, status: str, stdout: str = "") -> None:
        self.invocations[(command_id, instance_id)] = {"Status": status, "StandardOutputContent": stdout}

    def get_command_invocation(self, CommandId: str, InstanceId: str, **_: Any) -> dict[str, Any]:
        return self.invocations[(CommandId, InstanceId)]

    def cancel_command(self, **_: Any) -> None:
        pass


class FakeSfn:
    def __init__(self, stale: set[str] | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.stale = stale or set()

    def _check(self, token: str) -> None:
        if token in self.stale:
            raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "timed out"}}, "SendTaskSuccess")

    def send_task_success(self, taskToken: str, output: str) -> None:
        self._check(taskToken)
        self.calls.append(("success", taskToken, json.loads(output)))

    def send_task_failure(self, taskToken: str, error: str, cause: str) -> None:
        self._check(taskToken)
        self.calls.append(("failure", taskToken, {"error": error, "cause": cause}))


@pytest.fixture
def table() -> Iterator[TokenTable]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-west-2")
        client.create_table(
            TableName="tokens",
            KeySchema=[{"AttributeName": "invocation", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "invocation", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield TokenTable(client, "tokens")


def ref(command_id: str = "c-1", instance_id: str = A) -> CommandRef:
    return CommandRef(
        step="sync",
        document="sync",
        command_id=command_id,
        instance_id=instance_id,
        sent_at=100.0,
        first_sent_at=100.0,
        deadline=1000.0,
    )


def event(command_id: str, instance_id: str, status: str = "Success") -> dict[str, Any]:
    return {
        "source": "aws.ssm",
        "detail-type": DETAIL_TYPE,
        "detail": {
            "command-id": command_id,
            "instance-id": instance_id,
            "status": status,
            "document-name": "sync",
        },
    }


def test_await_of_a_running_command_keeps_the_token_and_sends_nothing(table: TokenTable) -> None:
    ssm, sfn = FakeSsm(), FakeSfn()
    ssm.set("c-1", A, "InProgress")
    assert await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-1", now=150.0) == "waiting"
    assert sfn.calls == []
    found = table.get(completion.invocation_key("c-1", A))
    assert found is not None and found[0] == "t-1" and found[1].command_id == "c-1"


def test_a_command_that_ended_before_the_token_was_stored_completes_at_the_await(table: TokenTable) -> None:
    # Given the command ended (and its event came and found no token)
    ssm, sfn = FakeSsm(), FakeSfn()
    ssm.set("c-1", A, "Success", '{"ok": true, "files_total": 1, "total_bytes": 2}\n')
    assert on_status_event(event("c-1", A), CONFIG, ssm, table, sfn, now=140.0) == "unknown"
    # When the Await stores its token and reads once
    assert await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-1", now=150.0) == "completed"
    # Then the token is completed with the same object the poll returns, and the item is gone
    ((kind, token, output),) = sfn.calls
    assert (kind, token, output["status"], output["result"]["files_total"]) == (
        "success",
        "t-1",
        "Success",
        1,
    )
    assert output["command_id"] == "c-1" and output["finished_at"] is not None
    assert table.get(completion.invocation_key("c-1", A)) is None


def test_the_completer_ends_the_step_exactly_once(table: TokenTable) -> None:
    ssm, sfn = FakeSsm(), FakeSfn()
    ssm.set("c-1", A, "InProgress")
    await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-1", now=150.0)
    ssm.set("c-1", A, "Success", '{"ok": true}\n')
    assert on_status_event(event("c-1", A), CONFIG, ssm, table, sfn, now=160.0) == "completed"
    # a duplicate event, and the Await's next round racing it, complete nothing more
    assert on_status_event(event("c-1", A), CONFIG, ssm, table, sfn, now=161.0) == "unknown"
    assert [c[:2] for c in sfn.calls] == [("success", "t-1")]


def test_whoever_deletes_the_token_first_wins(table: TokenTable) -> None:
    ssm, sfn = FakeSsm(), FakeSfn()
    ssm.set("c-1", A, "InProgress")
    await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-1", now=150.0)
    key = completion.invocation_key("c-1", A)
    outcome = completion.Outcome(output={"status": "Success"})
    assert completion.complete(sfn, table, key, "t-1", outcome) is True
    assert completion.complete(sfn, table, key, "t-1", outcome) is False
    # a round's token replaced by the next round's is not the one to complete
    await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-2", now=160.0)
    assert completion.complete(sfn, table, key, "t-1", outcome) is False
    assert [c[1] for c in sfn.calls] == ["t-1"]


def test_a_failed_command_fails_the_token_with_the_typed_error_and_its_cause(table: TokenTable) -> None:
    ssm, sfn = FakeSsm(), FakeSfn()
    ssm.set("c-1", A, "InProgress")
    await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-1", now=150.0)
    ssm.invocations[("c-1", A)] = {
        "Status": "Failed",
        "StandardOutputContent": '{"ok": false, "error": "s5cmd: access denied"}\n',
        "StandardErrorContent": "boom\n",
    }
    assert on_status_event(event("c-1", A, "Failed"), CONFIG, ssm, table, sfn, now=160.0) == "completed"
    ((kind, token, failure),) = sfn.calls
    assert (kind, token, failure["error"]) == ("failure", "t-1", "SyncFailed")
    assert "s5cmd: access denied" in failure["cause"]


def test_two_instances_of_one_command_complete_their_own_tokens(table: TokenTable) -> None:
    # One command id on two instances: each invocation has its own token
    ssm, sfn = FakeSsm(), FakeSfn()
    for instance_id, token in ((A, "t-a"), (B, "t-b")):
        ssm.set("c-1", instance_id, "InProgress")
        await_command(SYNC, CONFIG, ssm, table, sfn, ref("c-1", instance_id), token, now=150.0)
    ssm.set("c-1", B, "Success", '{"ok": true, "from": "b"}\n')
    assert on_status_event(event("c-1", B), CONFIG, ssm, table, sfn, now=160.0) == "completed"
    ((_kind, token, output),) = sfn.calls
    assert (token, output["instance_id"], output["result"]) == ("t-b", B, {"ok": True, "from": "b"})
    # A's step still waits: its token is untouched
    found = table.get(completion.invocation_key("c-1", A))
    assert found is not None and found[0] == "t-a"


@pytest.mark.parametrize(
    "incoming",
    [
        event("c-1", A, "InProgress"),
        {"source": "aws.ec2", "detail-type": DETAIL_TYPE, "detail": {}},
        {"hello": "world"},
    ],
)
def test_anything_but_a_terminal_status_change_is_ignored(table: TokenTable, incoming: Any) -> None:
    ssm, sfn = FakeSsm(), FakeSfn()
    ssm.set("c-1", A, "InProgress")
    await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-1", now=150.0)
    assert on_status_event(incoming, CONFIG, ssm, table, sfn, now=160.0) == "ignored"
    assert sfn.calls == []


def test_an_event_the_invocation_does_not_show_ended_yet_leaves_the_token(table: TokenTable) -> None:
    ssm, sfn = FakeSsm(), FakeSfn()
    ssm.set("c-1", A, "InProgress")
    await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-1", now=150.0)
    assert on_status_event(event("c-1", A), CONFIG, ssm, table, sfn, now=160.0) == "not-ended"
    assert table.get(completion.invocation_key("c-1", A)) is not None


def test_a_token_whose_round_timed_out_is_not_an_error(table: TokenTable) -> None:
    ssm, sfn = FakeSsm(), FakeSfn(stale={"t-1"})
    ssm.set("c-1", A, "Success", '{"ok": true}\n')
    assert await_command(SYNC, CONFIG, ssm, table, sfn, ref(), "t-1", now=150.0) == "taken"


def test_a_round_lasts_the_safety_net_or_until_just_past_the_deadline() -> None:
    command = ref()  # deadline 1000
    assert await_timeout(command, now=150.0, safety_net=600) == 600
    assert await_timeout(command, now=900.0, safety_net=600) == 100 + AWAIT_GRACE_SECONDS
    assert await_timeout(command, now=2000.0, safety_net=600) == 1
