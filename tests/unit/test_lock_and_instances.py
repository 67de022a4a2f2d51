"""The per-instance lock (moto DynamoDB) and the choice of instance."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from asoba_deploy.core import lock
from asoba_deploy.core.errors import DeploymentInProgress, InvalidInput
from asoba_deploy.core.validate_input import choose_instance

IDS = ["i-0123456789abcdef0", "i-0fedcba9876543210"]


@pytest.fixture
def table() -> Iterator[tuple[Any, str]]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-west-2")
        dynamodb.create_table(
            TableName="lock",
            KeySchema=[{"AttributeName": "instance_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "instance_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield dynamodb, "lock"


def acquire(
    table: tuple[Any, str], instance: str, holder: str, now: float, running: set[str]
) -> dict[str, Any]:
    dynamodb, name = table
    return lock.acquire(
        dynamodb,
        name,
        instance_id=instance,
        holder=holder,
        model="m",
        now=now,
        holder_running=lambda arn: arn in running,
    )


def test_second_holder_is_refused_while_the_first_runs(table: tuple[Any, str]) -> None:
    acquire(table, IDS[0], "exec:a", 1000.0, {"exec:a"})
    with pytest.raises(DeploymentInProgress, match="a \\(model m\\)"):
        acquire(table, IDS[0], "exec:b", 1001.0, {"exec:a", "exec:b"})


def test_the_lock_is_per_instance(table: tuple[Any, str]) -> None:
    acquire(table, IDS[0], "exec:a", 1000.0, {"exec:a"})
    assert acquire(table, IDS[1], "exec:b", 1001.0, {"exec:a", "exec:b"})["taken_over"] is None


def test_a_holder_that_no_longer_runs_is_taken_over(table: tuple[Any, str]) -> None:
    acquire(table, IDS[0], "exec:a", 1000.0, {"exec:a"})
    assert acquire(table, IDS[0], "exec:b", 1001.0, {"exec:b"})["taken_over"] == "exec:a"


def test_an_expired_lock_is_free_even_if_its_holder_looks_alive(table: tuple[Any, str]) -> None:
    acquire(table, IDS[0], "exec:a", 1000.0, {"exec:a"})
    later = 1000.0 + lock.LOCK_TTL_SECONDS + 1
    assert acquire(table, IDS[0], "exec:b", later, {"exec:a", "exec:b"})["holder"] == "exec:b"


def test_release_only_frees_ones_own_lock(table: tuple[Any, str]) -> None:
    dynamodb, name = table
    acquire(table, IDS[0], "exec:a", 1000.0, {"exec:a"})
    assert lock.release(dynamodb, name, instance_id=IDS[0], holder="exec:b")["released"] is False
    assert lock.release(dynamodb, name, instance_id=IDS[0], holder="exec:a")["released"] is True


def test_instance_choice_defaults_to_the_first_and_refuses_others() -> None:
    assert choose_instance(None, IDS) == IDS[0]
    assert choose_instance(IDS[1], IDS) == IDS[1]
    with pytest.raises(InvalidInput, match="not one of the instances"):
        choose_instance("i-00000000000000bad", IDS)
