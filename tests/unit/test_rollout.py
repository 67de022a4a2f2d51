"""The fleet contract and the rollout's core: input, tag resolution, tolerance, counter, rows."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from asoba_deploy.core import rollout
from asoba_deploy.core.contracts import parse_request
from asoba_deploy.core.errors import InvalidInput
from local import dynamodb_atomic

A, B, C = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2", "i-0ccccccccccccccc3"


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        ({"instances": []}, "instances"),
        ({"instances": [A, A]}, f"names {A} more than once"),
        ({"instances": ["not-an-id"]}, "instances.0"),
        ({"instance_id": A, "instances": [B]}, "instance_id and instances"),
        ({"instances": [A], "instance_tag": {"key": "k", "value": "v"}}, "instances and instance_tag"),
        ({"instance_tag": {"key": "", "value": "v"}}, "instance_tag.key"),
        ({"instance_tag": {"key": "k"}}, "instance_tag.value"),
        ({"instances": [A], "max_concurrency": 0}, "max_concurrency"),
        ({"instances": [A], "max_concurrency": 41}, "max_concurrency"),
        ({"instances": [A], "tolerated_failures": -1}, "tolerated_failures"),
        ({"instances": [A], "tolerated_failures": "101%"}, "tolerated_failures"),
        ({"instances": [A], "tolerated_failures": "one"}, "tolerated_failures"),
        ({"instances": [A], "tolerated_failures": True}, "tolerated_failures"),
        ({"instances": [A], "rollback_on_failure": "yes"}, "rollback_on_failure"),
        ({"instances": [f"i-{n:017x}" for n in range(rollout.MAX_FLEET + 1)]}, "at most"),
        ({"instances": [A], "mode": "validate"}, "a fleet is deployed"),
    ],
)
def test_bad_fleet_input_is_refused_with_a_named_field(payload: dict[str, Any], names: str) -> None:
    # Given a fleet input with one bad field / When parsed / Then InvalidInput names it
    with pytest.raises(InvalidInput, match=names):
        parse_request({"model": "tiny", **payload})


def test_a_fleet_request_keeps_its_fields() -> None:
    request = parse_request(
        {"model": "tiny", "instances": [A, B], "max_concurrency": 2, "tolerated_failures": "50%"}
    )
    assert request.fleet and request.instances == [A, B]
    assert (request.max_concurrency, request.tolerated_failures, request.rollback_on_failure) == (
        2,
        "50%",
        False,
    )
    assert not parse_request({"model": "tiny", "instance_id": A}).fleet


@pytest.mark.parametrize(
    ("tolerated", "size", "count"),
    [(0, 3, 0), (1, 3, 1), ("0%", 3, 0), ("33%", 3, 0), ("34%", 3, 1), ("50%", 4, 2), ("100%", 3, 3)],
)
def test_a_percent_tolerance_rounds_down(tolerated: int | str, size: int, count: int) -> None:
    assert rollout.tolerated_count(tolerated, size) == count


def test_max_concurrency_is_capped_at_the_fleet_size() -> None:
    assert rollout.plan_rollout(2, 10, 0, False, fleet=True).max_concurrency == 2


@pytest.fixture
def aws_() -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-west-2")
        dynamodb.create_table(
            TableName="lock",
            KeySchema=[{"AttributeName": "instance_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "instance_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield dynamodb, boto3.client("ec2", region_name="us-west-2")


def _launch(ec2: Any, tags: dict[str, str]) -> str:
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    extra = {"TagSpecifications": spec} if tags else {}
    created = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, **extra)
    return str(created["Instances"][0]["InstanceId"])


def test_a_tag_resolves_to_the_stacks_instances_carrying_it(aws_: tuple[Any, Any]) -> None:
    _, ec2 = aws_
    # Given three stack instances, two tagged fleet=blue, and a tagged instance outside the stack
    first, second, untagged = (
        _launch(ec2, {"fleet": "blue"}),
        _launch(ec2, {"fleet": "blue"}),
        _launch(ec2, {}),
    )
    outside = _launch(ec2, {"fleet": "blue"})
    stack = [untagged, second, first]
    tag = rollout.InstanceTag(key="fleet", value="blue")
    # When resolved / Then only the stack's tagged ones, in the stack's order
    assert rollout.fleet_instances(ec2, None, tag, stack) == [second, first]
    assert outside not in rollout.fleet_instances(ec2, None, tag, stack)
    # and a tag nobody carries is refused
    with pytest.raises(InvalidInput, match="carries the tag fleet=green"):
        rollout.fleet_instances(ec2, None, rollout.InstanceTag(key="fleet", value="green"), stack)


def test_named_instances_must_be_the_stacks(aws_: tuple[Any, Any]) -> None:
    with pytest.raises(InvalidInput, match=f"instances: {C} not among"):
        rollout.fleet_instances(aws_[1], [A, C], None, [A, B])
    assert rollout.fleet_instances(aws_[1], [B, A], None, [A, B]) == [B, A]


def test_concurrent_failures_are_each_counted_and_close_admission(aws_: tuple[Any, Any]) -> None:
    # Given the local cloud's DynamoDB, whose item writes are atomic as on AWS
    dynamodb_atomic.install()
    dynamodb, _ = aws_
    plan = rollout.plan_rollout(10, 4, 2, False, fleet=True)
    execution = "arn:aws:states:us-west-2:123456789012:execution:m:run-1"
    assert rollout.admitted(rollout.failures_so_far(dynamodb, "lock", execution), plan)
    # When five iterations fail at once
    with ThreadPoolExecutor(5) as pool:
        counts = sorted(
            pool.map(lambda _: rollout.count_failure(dynamodb, "lock", execution, now=0), range(5))
        )
    # Then each failure is counted once, and no further instance is admitted
    assert counts == [1, 2, 3, 4, 5]
    assert not rollout.admitted(rollout.failures_so_far(dynamodb, "lock", execution), plan)
    # and another execution's rollout is not affected
    assert rollout.failures_so_far(dynamodb, "lock", execution + "-other") == 0


def test_the_summary_fails_past_the_tolerance_and_names_each_instance() -> None:
    now = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    record = {
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:00:30+00:00",
        "plan": {"fits": True, "action": "coexist", "summary": "fits beside Flux"},
        "steps": {"sync": {"seconds": 1.5}},
        "endpoints": {"generate": "http://x/generate"},
    }
    rows = [
        rollout.done_row(A, False, record),
        rollout.failed_row(B, "HealthCheckFailed", "x" * 1000, None, "2026-01-01T00:00:00+00:00", now),
        rollout.not_started_row(C, 1, rollout.plan_rollout(3, 1, 0, False, fleet=True)),
    ]
    assert rows[0].seconds == 30 and rows[0].steps == {"sync": 1.5}
    assert len(rows[1].cause or "") == rollout.CAUSE_CHARACTERS
    strict = rollout.summarize(rows, rollout.plan_rollout(3, 1, 0, False, fleet=True), dry_run=False)
    assert strict.outcome == "failed"
    assert strict.counts == {"failed": 1, "not-started": 1, "succeeded": 1}
    assert f"{A}: succeeded" in strict.cause and f"{B}: failed (HealthCheckFailed)" in strict.cause
    assert f"{C}: not-started" in strict.cause
    lenient = rollout.summarize(rows, rollout.plan_rollout(3, 1, 1, False, fleet=True), dry_run=False)
    assert lenient.outcome == "succeeded"


def test_the_largest_fleet_fits_the_history_in_the_worst_case() -> None:
    # Given each deployment's worst case at the default safety net (every event lost, every step
    # to its budget), for a 30 GB model / Then the contract's largest fleet stays under 25,000
    from asoba_deploy.core.config import DeployConfig
    from local.limits import HISTORY_EVENTS, worst_case_events
    from tests.unit.test_history_worst_case import FIXED_STATES, PER_INSTANCE_STATES, worst_case

    default_safety_net = int(DeployConfig.model_fields["safety_net_seconds"].default)
    # each instance: its steps to their budgets and the states of its deployment and its undo;
    # once for the execution: every state of the machine (the fleet's own ones among them)
    per_instance = worst_case(default_safety_net, 30 * 1024**3, fixed_states=PER_INSTANCE_STATES)
    once = worst_case_events({}, lambda elapsed: default_safety_net, fixed_states=FIXED_STATES)
    assert rollout.MAX_FLEET * per_instance + once < HISTORY_EVENTS


def test_a_rolled_back_deployment_is_no_longer_the_one_in_place() -> None:
    from asoba_deploy.core.ledger import LedgerRecord, current_deployment

    def record(execution: str, outcome: str, key: str) -> LedgerRecord:
        return LedgerRecord.model_validate(
            {
                "instance_id": A,
                "record_key": key,
                "execution": execution,
                "model": "tiny",
                "dry_run": False,
                "outcome": outcome,
                "started_at": key,
                "finished_at": key,
                "instance_type": "g5.xlarge",
                "cost_per_hour_usd": None,
            }
        )

    before = record("exec-1", "succeeded", "1")
    rolled = record("exec-2", "succeeded", "2")
    undone = rollout.undone_row(rollout.InstanceRow(instance_id=A, outcome="succeeded", started_at="2"), None)
    back = rollout.rolled_back_record(
        undone, "exec-2", "tiny", instance_type="g5.xlarge", now=datetime.now(UTC)
    )
    assert undone.outcome == "rolled-back" and back.outcome == "rolled-back"
    # newest first: the rollback, the success it undid, the deployment before it
    assert current_deployment([back, rolled, before]) == before
    assert current_deployment([rolled, before]) == rolled
    failed = rollout.undone_row(undone, {"Error": "RollbackFailed", "Cause": "x" * 900})
    assert (failed.outcome, failed.error, len(failed.cause or "")) == (
        "rollback-failed",
        "RollbackFailed",
        400,
    )
