"""Hostile parameter values are refused by SendCommand itself, before any script runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ssm.models import ssm_backends

from local.sandbox import Sandbox
from local.sandbox.documents import document_content, document_names
from local.sandbox.validation import InvalidParameters, resolve_parameters
from tests.fixtures import REGION, Aws

HOSTILE = [
    "../../etc/passwd",
    "$(reboot)",
    "`id`",
    "a;rm -rf /",
    "a|b",
    "a\nb",
    "flux-api.service\n",
    "x" * 10_000,
    "",
]
# Values that make a document valid where it has required parameters.
REQUIRED = {
    "ModelName": "tiny-model",
    "SourceUri": "s3://bucket/models/tiny-model/",
    "RuntimeBundleUri": "https://s3.us-west-2.amazonaws.com/bucket/assets/runtime.zip",
    "S5cmdUri": "https://s3.us-west-2.amazonaws.com/bucket/assets/s5cmd",
    "ModelPath": "/opt/models/tiny-model",
    # evict: the resident units it stops
    "Units": "asoba-inference@tiny-old.service",
    # switch: the stable port moved to the new model's unit
    "StablePort": "8001",
    "BackendPort": "8002",
    "BackendModel": "tiny-model",
    "BackendUnit": "asoba-inference@tiny-model.service",
}


def valid_values(name: str, sandbox: Sandbox) -> dict[str, str]:
    parameters = document_content(name)["parameters"]
    values = sandbox.document_params(name)
    values.update({p: v for p, v in REQUIRED.items() if p in parameters})
    return values


def send(aws: Aws, sandbox: Sandbox, name: str, values: dict[str, Any]) -> Any:
    return aws.ssm.send_command(
        InstanceIds=[sandbox.instance_id],
        DocumentName=name,
        Parameters={key: value if isinstance(value, list) else [value] for key, value in values.items()},
    )


def send_to_backend(sandbox: Sandbox, name: str, values: dict[str, str]) -> None:
    """SendCommand straight into moto's SSM backend (the agent's hook included), without HTTP."""
    backend = ssm_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.send_command(
        comment="",
        document_name=name,
        timeout_seconds=600,
        instance_ids=[sandbox.instance_id],
        max_concurrency="50",
        max_errors="0",
        notification_config=None,
        output_s3_bucket_name="",
        output_s3_key_prefix="",
        output_s3_region="",
        service_role_arn="",
        targets=[],
        parameters={key: [value] for key, value in values.items()},
    )


@pytest.mark.parametrize("name", document_names())
def test_hostile_values_are_refused_before_anything_runs(
    name: str, aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a sandbox instance and otherwise valid parameters
    sandbox = make_sandbox()
    before = sandbox.tree_digest()
    base = valid_values(name, sandbox)
    declared = document_content(name)["parameters"]
    parameters = list(declared)
    for parameter in parameters:
        # An optional parameter whose default is "" (e.g. sync's BaseModelName) declares "" as
        # "none": the empty value is valid there, and the script treats it as absent.
        optional_empty = declared[parameter].get("default") == ""
        for hostile in HOSTILE:
            if hostile == "" and optional_empty:
                continue
            # When one parameter carries a hostile value, SSM refuses the command as a whole
            with pytest.raises(InvalidParameters):
                send_to_backend(sandbox, name, {**base, parameter: hostile})
    # (and through the API, as a client sees it: each value once, on rotating parameters)
    for index, hostile in enumerate(HOSTILE):
        parameter = parameters[index % len(parameters)]
        if hostile == "" and declared[parameter].get("default") == "":
            parameter = next(p for p in parameters if declared[p].get("default") != "")
        with pytest.raises(ClientError) as refused:
            send(aws, sandbox, name, {**base, parameter: hostile})
        assert refused.value.response["Error"]["Code"] == "InvalidParameters", (parameter, hostile[:20])
    # And no command exists, no script ran, nothing changed
    assert aws.ssm.list_commands(InstanceId=sandbox.instance_id)["Commands"] == []
    assert not sandbox.orchestration_dir.exists()
    assert sandbox.tree_digest() == before


@pytest.mark.parametrize("name", ["sync", "install"])
def test_a_missing_required_value_is_refused(
    name: str, aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    sandbox = make_sandbox()
    values = valid_values(name, sandbox)
    values.pop("ModelName")
    with pytest.raises(ClientError) as refused:
        send(aws, sandbox, name, values)
    assert refused.value.response["Error"]["Code"] == "InvalidParameters"
    assert "ModelName" in refused.value.response["Error"]["Message"]


def test_an_unknown_parameter_and_two_values_are_refused(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    sandbox = make_sandbox()
    for values in ({"Surprise": "1"}, {"Unit": ["a.service", "b.service"]}):
        with pytest.raises(ClientError) as refused:
            send(aws, sandbox, "stop-flux", values)
        assert refused.value.response["Error"]["Code"] == "InvalidParameters"


def test_a_valid_command_with_defaults_is_accepted(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    command = send(aws, sandbox, "health-check", {"Port": "8001"})["Command"]
    assert command["DocumentName"] == "health-check"


@pytest.mark.parametrize("value", ["8001", "65535", "10"])
def test_ports_accept_numbers(value: str) -> None:
    spec = document_content("health-check")["parameters"]
    assert resolve_parameters(spec, {"Port": [value]})["Port"] == value


@pytest.mark.parametrize("value", ["0", "080", "123456", "80a", " 8001", "8001 "])
def test_ports_refuse_what_is_not_a_port(value: str) -> None:
    spec = document_content("health-check")["parameters"]
    with pytest.raises(InvalidParameters):
        resolve_parameters(spec, {"Port": [value]})


@pytest.mark.parametrize(
    "value",
    [
        "a..b/../c",
        "/opt/../etc",
        "/opt/./x",
        "/opt//x",
        "opt/models",
        "/",
        "/opt/",
        "/opt/..",
        "/opt/.",
        "/opt/..hidden",
        "/opt/-rf",
    ],
)
def test_roots_refuse_relative_and_dotted_paths(value: str) -> None:
    spec = document_content("collect-resources")["parameters"]
    with pytest.raises(InvalidParameters):
        resolve_parameters(spec, {"ModelsRoot": [value]})


@pytest.mark.parametrize(
    "value",
    [
        "/opt/models",
        "/work/main/.venv/bin/python",
        "/opt/pytorch/bin/python3.12",
        "/tmp/pytest-of-root/pytest-1/test_x0/instance/opt/models",
    ],
)
def test_roots_accept_real_paths(value: str) -> None:
    spec = document_content("install")["parameters"]
    assert resolve_parameters({"BasePython": spec["BasePython"]}, {"BasePython": [value]}) == {
        "BasePython": value
    }


@pytest.mark.parametrize(
    "value",
    ["s3://bkt/models/../x/", "s3://bkt/./x/", "s3://BKT/x/", "s3://b", "https://b/x", "s3://bucket/a b/"],
)
def test_sources_refuse_what_is_not_a_plain_s3_prefix(value: str) -> None:
    spec = document_content("sync")["parameters"]
    with pytest.raises(InvalidParameters):
        resolve_parameters(spec, {"ModelName": ["m"], "SourceUri": [value]})


def test_model_names_with_dot_dot_pass_the_pattern_but_not_the_script(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # "a..b" is one harmless path segment for SSM's pattern; the script still refuses any "..".
    from local.sandbox.documents import run_document

    sandbox = make_sandbox()
    run = run_document(aws.ssm, sandbox, "sync", ModelName="a..b", SourceUri=f"s3://{aws.bucket}/models/x/")
    assert run.status == "Failed"
    assert run.result == {"ok": False, "error": "model name must not contain '..': a..b"}
