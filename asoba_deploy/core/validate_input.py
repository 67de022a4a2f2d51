"""Pre-flight checks of the validate-input step: the model is in the bucket, the instance runs."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from asoba_deploy.core.errors import InstanceUnavailable, InvalidInput, ModelNotFound

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
STARTABLE_STATES = ("running", "pending", "stopping", "stopped")


def choose_instance(requested: str | None, configured: list[str]) -> str:
    if requested is None:
        return configured[0]
    if requested not in configured:
        raise InvalidInput(
            f"instance_id: {requested} is not one of the instances this stack manages "
            f"({', '.join(configured)})"
        )
    return requested


def model_prefix(prefix: str, model: str) -> str:
    return f"{prefix}{model}/"


def check_model_present(s3: Any, bucket: str, prefix: str, model: str) -> dict[str, Any]:
    """The model folder must hold a config.json and at least one weights file (or be an adapter)."""
    key_prefix = model_prefix(prefix, model)
    names: list[str] = []
    total = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
            for item in page.get("Contents", []):
                names.append(item["Key"][len(key_prefix) :])
                total += int(item["Size"])
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise ModelNotFound(f"cannot list s3://{bucket}/{key_prefix}: {code}") from None
    where = f"s3://{bucket}/{key_prefix}"
    if not names:
        raise ModelNotFound(f"model '{model}' not found: nothing under {where}")
    is_adapter = "adapter_config.json" in names
    if "config.json" not in names and not is_adapter:
        raise ModelNotFound(f"model '{model}' has no config.json under {where}")
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        raise ModelNotFound(f"model '{model}' has no weights (*.safetensors, *.bin) under {where}")
    return {"uri": where, "files": len(names), "bytes": total, "adapter": is_adapter}


def describe_instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    """The instance as DescribeInstances gives it; InstanceUnavailable when EC2 does not know it."""
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise InstanceUnavailable(f"instance {instance_id} not found ({code})") from None
    instances = [i for r in reservations for i in r.get("Instances", [])]
    if not instances:
        raise InstanceUnavailable(f"instance {instance_id} not found")
    return dict(instances[0])


def check_instance_running(ec2: Any, instance_id: str) -> dict[str, Any]:
    instance = describe_instance(ec2, instance_id)
    state = instance.get("State", {}).get("Name", "unknown")
    # A stopped (or stopping, or starting) instance is started by the deployment's WakeInstance
    # (core/wake.py) and reported as stopped by the scheduled check; a terminated one is gone.
    if state not in STARTABLE_STATES:
        raise InstanceUnavailable(f"instance {instance_id} is {state}: it cannot run a deployment")
    return {"instance_id": instance_id, "state": state, "instance_type": instance.get("InstanceType")}


def check_ssm_online(ssm: Any, instance_id: str) -> str:
    """PingStatus of the instance's SSM agent; raises when it is not Online."""
    info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]).get(
        "InstanceInformationList", []
    )
    status = info[0].get("PingStatus", "Unknown") if info else "NotRegistered"
    if status != "Online":
        raise InstanceUnavailable(f"instance {instance_id} SSM agent is {status}, not Online")
    return str(status)
