"""What the document tests of several steps share: a model in the bucket, an install, a wait."""

from __future__ import annotations

import time
from typing import Any

from local.sandbox import DocumentRun, Sandbox, run_document, send_document, wait_invocation
from tests.fixtures import Aws


def upload_model(aws: Aws, name: str, *, crash: bool = False) -> str:
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\0" * 4096}
    if crash:
        files["FAKE_RUNTIME_CRASH"] = b""
    for file_name, data in files.items():
        aws.s3.put_object(Bucket=aws.bucket, Key=f"models/{name}/{file_name}", Body=data)
    return f"s3://{aws.bucket}/models/{name}/"


def ok(run: DocumentRun) -> dict[str, object]:
    assert run.status == "Success", run.explain()
    assert run.result is not None and run.result["ok"] is True, run.explain()
    return run.result


def install(
    aws: Aws, sandbox: Sandbox, bundle: str, model: str, port: int, **values: str
) -> dict[str, object]:
    """install, then start-service (install writes the unit, start-service starts it), with more
    install `values` (a resident's ServiceUnit and EnvDir, Adapters); the install's result. The
    sync's marker is start-service's own test (test_start_service.py)."""
    parameters: dict[str, Any] = dict(values)  # document parameters, all strings
    installed = ok(
        run_document(
            aws.ssm,
            sandbox,
            "install",
            RuntimeBundleUri=bundle,
            ModelName=model,
            ModelPath=str(sandbox.models_root / model),
            Port=str(port),
            Host="127.0.0.1",
            **parameters,
        )
    )
    unit = {"ServiceUnit": values["ServiceUnit"]} if "ServiceUnit" in values else {}
    start_service(aws, sandbox, model, **unit)
    return installed


def start_service(aws: Aws, sandbox: Sandbox, model: str, **values: str) -> dict[str, object]:
    """start-service on the model's folder; without WaitForSync it does not wait for a marker."""
    parameters: dict[str, str | int] = {"ModelPath": str(sandbox.models_root / model), "WaitForSync": "false"}
    command_id = send_document(aws.ssm, sandbox, "start-service", **(parameters | values))
    return ok(wait_invocation(aws.ssm, sandbox, command_id))


def wait_health(
    aws: Aws, sandbox: Sandbox, port: int, want: str = "healthy", timeout_s: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = ok(run_document(aws.ssm, sandbox, "health-check", Port=str(port)))
        if result["status"] == want or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def instance_files(sandbox: Sandbox) -> dict[str, str]:
    """The instance's files, the model cache aside (undeploy keeps synced models)."""
    return {
        path: digest for path, digest in sandbox.tree_files().items() if not path.startswith("opt/models/")
    }
