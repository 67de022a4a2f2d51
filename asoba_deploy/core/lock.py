"""The per-instance deployment lock (a DynamoDB item with a TTL).

A second execution is refused at once with DeploymentInProgress. An execution that was
stopped or timed out cannot keep the instance: its lock is taken over when the holder is
no longer RUNNING, and expires by itself after the machine's own timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from asoba_deploy.core.errors import DeploymentInProgress

LOCK_TTL_SECONDS = 5 * 3600  # the state machine times out after 4 h


def _conditional_failed(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def acquire(
    dynamodb: Any,
    table: str,
    *,
    instance_id: str,
    holder: str,
    model: str,
    now: float,
    holder_running: Callable[[str], bool],
) -> dict[str, Any]:
    item = {
        "instance_id": {"S": instance_id},
        "holder": {"S": holder},
        "model": {"S": model},
        "acquired_at": {"N": f"{now:.3f}"},
        "expires_at": {"N": str(int(now + LOCK_TTL_SECONDS))},
    }
    try:
        dynamodb.put_item(
            TableName=table,
            Item=item,
            ConditionExpression="attribute_not_exists(instance_id) OR expires_at < :now OR holder = :me",
            ExpressionAttributeValues={":now": {"N": str(int(now))}, ":me": {"S": holder}},
        )
        return {"instance_id": instance_id, "holder": holder, "taken_over": None}
    except ClientError as error:
        if not _conditional_failed(error):
            raise
    current = dynamodb.get_item(TableName=table, Key={"instance_id": {"S": instance_id}}, ConsistentRead=True)
    other = current.get("Item", {})
    other_holder = other.get("holder", {}).get("S", "")
    if other_holder and not holder_running(other_holder):
        try:
            dynamodb.put_item(
                TableName=table,
                Item=item,
                ConditionExpression="holder = :old",
                ExpressionAttributeValues={":old": {"S": other_holder}},
            )
            return {"instance_id": instance_id, "holder": holder, "taken_over": other_holder}
        except ClientError as error:
            if not _conditional_failed(error):
                raise
    name = other_holder.rsplit(":", 1)[-1] or "another execution"
    raise DeploymentInProgress(
        f"instance {instance_id} is being deployed by {name} (model {other.get('model', {}).get('S', '?')}); "
        "nothing was changed"
    )


def release(dynamodb: Any, table: str, *, instance_id: str, holder: str) -> dict[str, Any]:
    try:
        dynamodb.delete_item(
            TableName=table,
            Key={"instance_id": {"S": instance_id}},
            ConditionExpression="holder = :me",
            ExpressionAttributeValues={":me": {"S": holder}},
        )
        return {"instance_id": instance_id, "released": True}
    except ClientError as error:
        if _conditional_failed(error):
            return {"instance_id": instance_id, "released": False}
        raise
