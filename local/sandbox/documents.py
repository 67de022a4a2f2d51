"""The project's SSM documents in moto, and running one on a sandbox to its end.

register_documents(ssm)                      # every ssm_documents/*.yaml, as the stack does
run = run_document(ssm, sandbox, "collect-resources")
run.status, run.result                       # "Success", the last stdout line as JSON
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
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
    # A document of several steps: the others' (name, status, stderr), in order; stdout,
    # stderr and response_code are the last (script) step's, status the whole invocation's.
    other_steps: list[tuple[str, str, str]] = field(default_factory=list)

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
            + "".join(f"\n--- step {name}: {state}\n{err[-2000:]}" for name, state, err in self.other_steps)
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
    plugins: list[str] = []  # set once SSM says the document has several steps
    while True:
        try:
            if plugins:
                status, details = _invocation_status(ssm, sandbox, command_id)
                invocation = ssm.get_command_invocation(
                    CommandId=command_id, InstanceId=sandbox.instance_id, PluginName=plugins[-1]
                )
            else:
                invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
                status, details = invocation["Status"], invocation["StatusDetails"]
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "InvalidPluginName" and not plugins:
                plugins = _plugin_names(ssm, sandbox, command_id)
                continue
            if code != "InvocationDoesNotExist" or time.monotonic() > deadline:
                raise
            time.sleep(poll_s)
            continue
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in TERMINAL:
            others = []
            for name in plugins[:-1]:
                step = ssm.get_command_invocation(
                    CommandId=command_id, InstanceId=sandbox.instance_id, PluginName=name
                )
                others.append((name, str(step["Status"]), str(step["StandardErrorContent"])))
            return DocumentRun(
                command_id=command_id,
                status=status,
                status_details=details,
                response_code=int(invocation["ResponseCode"]),
                stdout=invocation["StandardOutputContent"],
                stderr=invocation["StandardErrorContent"],
                statuses_seen=seen,
                other_steps=others,
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"command {command_id} still {status} after {timeout_s} s")
        time.sleep(poll_s)


def _listed(ssm: Any, sandbox: Sandbox, command_id: str) -> dict[str, Any]:
    listed = ssm.list_command_invocations(CommandId=command_id, InstanceId=sandbox.instance_id, Details=True)
    invocations = listed["CommandInvocations"]
    if not invocations:
        missing = {"Error": {"Code": "InvocationDoesNotExist", "Message": ""}}
        raise ClientError(missing, "ListCommandInvocations")  # type: ignore[arg-type]
    return dict(invocations[0])


def _plugin_names(ssm: Any, sandbox: Sandbox, command_id: str) -> list[str]:
    return [str(plugin["Name"]) for plugin in _listed(ssm, sandbox, command_id)["CommandPlugins"]]


def _invocation_status(ssm: Any, sandbox: Sandbox, command_id: str) -> tuple[str, str]:
    """The whole invocation's status (every step's), as ListCommandInvocations reports it."""
    invocation = _listed(ssm, sandbox, command_id)
    return str(invocation["Status"]), str(invocation["StatusDetails"])


def run_document(
    ssm: Any, sandbox: Sandbox, document: str, *, wait_s: float = 180.0, **values: str | int
) -> DocumentRun:
    """Send ``document`` to the sandbox and wait for its end."""
    return wait_invocation(ssm, sandbox, send_command(ssm, sandbox, document, values), timeout_s=wait_s)
