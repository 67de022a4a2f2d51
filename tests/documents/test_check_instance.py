"""check-instance: the scheduled check reports every check, passing or not."""

from __future__ import annotations

from collections.abc import Callable

from local.sandbox import Sandbox, run_document
from tests.fixtures import Aws


def test_check_instance_reports_every_check_even_when_one_fails(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a CPU instance whose model bucket does not exist
    sandbox = make_sandbox(gpu=False)

    run = run_document(aws.ssm, sandbox, "check-instance", S3Uri="s3://no-such-bucket-anywhere/")

    assert (run.status, run.response_code) == ("Failed", 1)
    assert run.result is not None
    assert run.result["error"] == "failed checks: s3"
    checks = {check["name"]: check["status"] for check in run.result["checks"]}  # type: ignore[union-attr]
    assert checks == {
        "s3": "fail",
        "privileges": "pass",
        "systemd": "pass",
        "flux_service": "warn",
        "inference_service": "skip",
        "memory": "pass",
        "gpu": "warn",
        "disk": checks["disk"],
        "python_env": "pass",
        "runtime": "skip",
        "health_format": "skip",
    }
    assert (run.result["failed"], run.result["skipped"]) == (1, 3)
    assert [c["name"] for c in run.result["checks"] if not c["ok"]] == ["s3"]  # type: ignore[union-attr]
    assert (run.result["gpu_free_bytes"], run.result["runtime_healthy"]) == (None, None)
