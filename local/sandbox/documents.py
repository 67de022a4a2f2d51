"""The project's SSM documents in moto, and running one on a sandbox to its end.

register_documents(ssm)                      # every ssm_documents/*.yaml, as the stack does
run = run_document(ssm, sandbox, "collect-resources")
run.status, run.result                       # "Success", the last stdout line as JSON
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from local.sandbox.sandbox import Sandbox

DOCUMENTS_DIR = Path(__file__).resolve().parents[2] / "ssm_documents"
TERMINAL = ("Success", "Failed", "TimedOut", "Cancelled")


def document_names() -> list[str]:
    return sorted(path.stem for path in DOCUMENTS_DIR.glob("*.yaml"))


def document_content(name: str) -> dict[str, Any]:
    content = yaml.safe_load((DOCUMENTS_DIR / f"{name}.yaml").read_text())
    assert isinstance(content, dict)
    return content


def register_documents(ssm: Any, names: list[str] | None = None) -> list[str]:
    """Create (or bring up to date) the documents in moto, named after their files."""
    registered = []
    for name in names or document_names():
        content = (DOCUMENTS_DIR / f"{name}.yaml").read_text()
        try:
            current = ssm.get_document(Name=name, DocumentFormat="YAML")["Content"]
        except ClientError:
            current = None
        if current != content:
            if current is not None:
                ssm.delete_document(Name=name)
            ssm.create_document(Content=content, Name=name, DocumentType="Command", DocumentFormat="YAML")
        registered.append(name)
    return registered


@dataclass
class DocumentRun:
    command_id: str
    status: str
    status_details: str
    response_code: int
    stdout: str
    stderr: str
    statuses_seen: list[str]

    @property
    def result(self) -> dict[str, Any] | None:
        """The last stdout line, parsed (every document prints its result there)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        if not lines:
            return None
        try:
            value = json.loads(lines[-1])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def explain(self) -> str:
        return (
            f"{self.status}/{self.status_details} rc={self.response_code}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"
        )


def send_document(ssm: Any, sandbox: Sandbox, document: str, **values: str | int) -> str:
    """SendCommand with the sandbox's roots plus ``values``; returns the command id."""
    return send_command(ssm, sandbox, document, values)


def send_command(
    ssm: Any, sandbox: Sandbox, document: str, values: dict[str, str | int], *, timeout_s: int | None = None
) -> str:
    """SendCommand with the sandbox's roots plus ``values`` (and TimeoutSeconds); the command id."""
    kwargs: dict[str, Any] = {
        "InstanceIds": [sandbox.instance_id],
        "DocumentName": document,
        "Parameters": sandbox.parameters(document, **values),
    }
    if timeout_s is not None:
        kwargs["TimeoutSeconds"] = timeout_s
    return str(ssm.send_command(**kwargs)["Command"]["CommandId"])


def wait_invocation(
    ssm: Any, sandbox: Sandbox, command_id: str, *, timeout_s: float = 180.0, poll_s: float = 0.1
) -> DocumentRun:
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while True:
        try:
            invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
        except ClientError as error:
            if error.response["Error"]["Code"] != "InvocationDoesNotExist" or time.monotonic() > deadline:
                raise
            time.sleep(poll_s)
            continue
        status = invocation["Status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in TERMINAL:
            return DocumentRun(
                command_id=command_id,
                status=status,
                status_details=invocation["StatusDetails"],
                response_code=int(invocation["ResponseCode"]),
                stdout=invocation["StandardOutputContent"],
                stderr=invocation["StandardErrorContent"],
                statuses_seen=seen,
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"command {command_id} still {status} after {timeout_s} s")
        time.sleep(poll_s)


def run_document(
    ssm: Any, sandbox: Sandbox, document: str, *, wait_s: float = 180.0, **values: str | int
) -> DocumentRun:
    """Send ``document`` to the sandbox and wait for its end."""
    return wait_invocation(ssm, sandbox, send_command(ssm, sandbox, document, values), timeout_s=wait_s)
