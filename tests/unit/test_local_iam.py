"""The local cloud's IAM evaluator (local/iam.py): policy semantics, the IAM request of a call,
and the client hook that authorizes a Lambda's calls against its role."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local import iam
from local.iam import Check, Decision, checks_for, evaluate

REGION = "us-west-2"
BUCKET = "asoba-llm-cache"

PLAN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"},
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": f"arn:aws:s3:::{BUCKET}",
            "Condition": {"StringLike": {"s3:prefix": ["*"]}},
        },
    ],
}


def allow(action: Any, resource: Any, **extra: Any) -> dict[str, Any]:
    statement = {"Effect": "Allow", "Action": action, "Resource": resource, **extra}
    return {"Version": "2012-10-17", "Statement": [statement]}


def test_actions_match_case_insensitively_with_wildcards() -> None:
    policy = allow("DynamoDB:Get*", "*")
    assert evaluate([policy], Check("dynamodb:GetItem", "arn:x")) is Decision.ALLOW
    assert evaluate([policy], Check("dynamodb:PutItem", "arn:x")) is Decision.IMPLICIT_DENY


def test_resources_must_match_the_arn() -> None:
    table = "arn:aws:dynamodb:us-west-2:123456789012:table/Lock"
    policy = allow(["dynamodb:PutItem"], table)
    assert evaluate([policy], Check("dynamodb:PutItem", table)) is Decision.ALLOW
    assert evaluate([policy], Check("dynamodb:PutItem", table + "2")) is Decision.IMPLICIT_DENY
    executions = "arn:aws:states:us-west-2:1:execution"
    execution = allow("states:DescribeExecution", f"{executions}:Deploy:*")
    ours = Check("states:DescribeExecution", f"{executions}:Deploy:x")
    assert evaluate([execution], ours) is Decision.ALLOW
    other = Check("states:DescribeExecution", f"{executions}:Other:x")
    assert evaluate([execution], other) is Decision.IMPLICIT_DENY


def test_explicit_deny_wins() -> None:
    deny = {"Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}
    assert evaluate([allow("s3:GetObject", "*"), deny], Check("s3:GetObject", "arn:aws:s3:::b/k")) is (
        Decision.EXPLICIT_DENY
    )


def test_not_action_and_not_resource() -> None:
    policy = {"Statement": [{"Effect": "Allow", "NotAction": "s3:DeleteObject", "NotResource": "arn:secret"}]}
    assert evaluate([policy], Check("s3:GetObject", "arn:open")) is Decision.ALLOW
    assert evaluate([policy], Check("s3:DeleteObject", "arn:open")) is Decision.IMPLICIT_DENY
    assert evaluate([policy], Check("s3:GetObject", "arn:secret")) is Decision.IMPLICIT_DENY


def test_a_condition_on_a_missing_key_fails_but_negated_and_if_exists_hold() -> None:
    listing = Check("s3:ListBucket", f"arn:aws:s3:::{BUCKET}")
    assert evaluate([PLAN_POLICY], listing) is Decision.IMPLICIT_DENY
    with_prefix = Check("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": ["tiny/"]})
    assert evaluate([PLAN_POLICY], with_prefix) is Decision.ALLOW
    for operator in ("StringNotEquals", "StringLikeIfExists", "ForAllValues:StringEquals"):
        policy = allow("s3:ListBucket", "*", Condition={operator: {"s3:prefix": "x"}})
        assert evaluate([policy], listing) is Decision.ALLOW, operator


def test_condition_operators() -> None:
    def judged(operator: str, wanted: Any, actual: str) -> bool:
        policy = allow("x:Y", "*", Condition={operator: {"k": wanted}})
        return evaluate([policy], Check("x:Y", "*", {"k": [actual]})) is Decision.ALLOW

    assert judged("StringEquals", ["a", "b"], "b")
    assert not judged("StringEquals", "a", "A")
    assert judged("StringEqualsIgnoreCase", "a", "A")
    assert judged("StringLike", "models/*", "models/x/y")
    assert not judged("StringNotLike", "models/*", "models/x")
    assert judged("ArnLike", "arn:aws:states:*:*:stateMachine:*", "arn:aws:states:us-west-2:1:stateMachine:m")
    assert judged("NumericLessThan", "10", "9")
    assert judged("Bool", True, "true")
    assert judged("Null", "false", "anything")
    with pytest.raises(iam.UnsupportedPolicy):
        judged("IpAddress", "10.0.0.0/8", "10.0.0.1")


def test_send_command_is_authorized_on_the_instance_and_the_document() -> None:
    checks, mapped = checks_for(
        "ssm", "SendCommand", {"InstanceIds": ["i-1"], "DocumentName": "Stack-sync"}, REGION
    )
    assert mapped
    assert [c.resource for c in checks] == [
        "arn:aws:ec2:us-west-2:123456789012:instance/i-1",
        "arn:aws:ssm:us-west-2:123456789012:document/Stack-sync",
    ]


def test_calls_map_to_their_iam_requests() -> None:
    (get,), _ = checks_for("s3", "HeadObject", {"Bucket": "b", "Key": "m/config.json"}, REGION)
    assert get == Check("s3:GetObject", "arn:aws:s3:::b/m/config.json")
    (listing,), _ = checks_for("s3", "ListObjectsV2", {"Bucket": "b", "Prefix": "m/"}, REGION)
    assert listing == Check("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": ["m/"]})
    (query,), _ = checks_for("dynamodb", "Query", {"TableName": "Ledger", "IndexName": "by"}, REGION)
    assert query.resource == "arn:aws:dynamodb:us-west-2:123456789012:table/Ledger/index/by"
    (described,), _ = checks_for("states", "DescribeExecution", {"executionArn": "arn:e"}, REGION)
    assert described == Check("states:DescribeExecution", "arn:e")
    (instances,), mapped = checks_for("ec2", "DescribeInstances", {}, REGION)
    assert instances == Check("ec2:DescribeInstances", "*") and mapped
    _, mapped = checks_for("ec2", "RunInstances", {}, REGION)
    assert not mapped


@pytest.fixture
def role(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("iam", region_name=REGION)
        arn = client.create_role(RoleName="PlanRole", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        client.put_role_policy(RoleName="PlanRole", PolicyName="p", PolicyDocument=json.dumps(PLAN_POLICY))
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_object(Bucket=BUCKET, Key="tiny/config.json", Body=b"{}")
        iam.install()
        try:
            yield str(arn)
        finally:
            iam.uninstall()


def code(error: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = error.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_a_role_gets_what_its_policy_grants_and_nothing_else(role: str) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    with iam.acting_as(role, "plan"):
        assert s3.get_object(Bucket=BUCKET, Key="tiny/config.json")["Body"].read() == b"{}"
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix="tiny/")["KeyCount"] == 1
        with pytest.raises(ClientError) as denied:
            s3.put_object(Bucket=BUCKET, Key="tiny/x", Body=b"")
        assert code(denied) == ("AccessDenied", 403)
        assert "assumed-role/PlanRole/plan" in str(denied.value)
        with pytest.raises(ClientError) as denied:
            boto3.client("dynamodb", region_name=REGION).get_item(TableName="T", Key={"k": {"S": "v"}})
        assert code(denied) == ("AccessDeniedException", 400)
        with pytest.raises(ClientError) as denied:
            boto3.client("ec2", region_name=REGION).describe_instances()
        assert code(denied) == ("UnauthorizedOperation", 403)
    s3.put_object(Bucket=BUCKET, Key="tiny/x", Body=b"")  # the harness keeps full rights


def test_a_missing_key_is_403_without_list_bucket_and_404_with_it(role: str) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    with iam.acting_as(role, "plan"):
        with pytest.raises(ClientError) as denied:
            s3.get_object(Bucket=BUCKET, Key="catalog.json")
        assert code(denied) == ("AccessDenied", 403)
        with pytest.raises(ClientError) as denied:
            s3.head_object(Bucket=BUCKET, Key="catalog.json")
        assert code(denied) == ("403", 403)
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=BUCKET, Key="catalog.json")
    assert code(missing) == ("NoSuchKey", 404)
    boto3.client("iam", region_name=REGION).put_role_policy(
        RoleName="PlanRole", PolicyName="list", PolicyDocument=json.dumps(allow("s3:ListBucket", "*"))
    )
    with iam.acting_as(role, "plan"), pytest.raises(ClientError) as missing:
        s3.get_object(Bucket=BUCKET, Key="catalog.json")
    assert code(missing) == ("NoSuchKey", 404)
