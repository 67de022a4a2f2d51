"""A local SSM agent for moto.

moto's SendCommand checks nothing and reports Success at once with empty output. ``install()``
wraps moto's SSM backend so that, for instance ids registered by a ``Sandbox``, a command
behaves as on a real instance:

* SendCommand validates the document and its parameters as SSM does (unknown document:
  InvalidDocument; unknown, missing or refused parameter: InvalidParameters; an instance that
  is not a sandbox: InvalidInstanceId) before anything runs;
* each ``aws:runShellScript`` step of the document, ``{{ Parameter }}`` substituted, is written to
  ``<orchestration>/<command-id>/<step>/_script.sh`` (0700) and started as ``sh -c <file>`` (so the
  ``#!/bin/bash`` line decides the shell) in its own process group, in a background thread, in the
  agent's working directory (the sandbox root, the instance's ``/``), with the agent's environment
  plus SSM_COMMAND_ID and AWS_SSM_* (``Sandbox.script_env``) and the step's ``timeoutSeconds``
  (under 5 or over 172800: 3600, as the agent);
* at the timeout the process group is SIGKILLed at once (no SIGTERM: traps do not run); exit code
  137 reads as TimedOut (ExecutionTimedOut), whoever exited with it;
* the invocation goes Pending -> InProgress -> Success | Failed | TimedOut, with
  StandardOutputContent / StandardErrorContent and ResponseCode per step (PluginName = step name):
  the agent keeps each stream's first 23,980 bytes + "--output truncated--" when it reaches 24,000,
  and GetCommandInvocation shows stderr's first 8,000 characters;
* an offline sandbox leaves new commands Pending until the command's TimeoutSeconds passes, then
  TimedOut with StatusDetails DeliveryTimedOut; DescribeInstanceInformation reports it
  ConnectionLost (and Online otherwise); a stopped EC2 instance counts as offline, and stopping
  and starting it powers the sandbox off and on (local/sandbox/power.py);
* CancelCommand stops a pending or running invocation (Cancelled; its processes are killed);
* ``aws:downloadContent`` steps (S3 source) run as the agent's plugin (download_content.py), with
  the instance role; a failed step ends the document only with ``onFailure: exit`` in its inputs
  (or exit 168/169), as runpluginutil.go decides, and the steps it ends read Skipped;
* with CloudWatchOutputConfig, each step's stdout and stderr also go to CloudWatch Logs as the
  instance role (streams <command-id>/<instance-id>/<step>/stdout|stderr; CreateLogGroup and
  DescribeLogGroups first; a refused call turns streaming off for the command), a script's while
  it runs (its complete lines every second), as the real agent tails its output files;
* ListCommandInvocations, DescribeInstanceInformation and CancelCommand, absent from moto, are added.

Works with ``mock_aws()`` and with ``moto.server.ThreadedMotoServer`` in the same process (both
use the same backend objects). Commands for other instance ids keep moto's behaviour.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ssm.exceptions import SSMException
from moto.ssm.models import Command, SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse

from local.sandbox import download_content, power
from local.sandbox.validation import resolve_parameters, substitute

if TYPE_CHECKING:
    from local.sandbox.sandbox import Sandbox

# From github.com/aws/amazon-ssm-agent (agent/ paths named where each is used).
AGENT_OUTPUT_LIMIT = 24_000  # iohandler.DefaultOutputConfig MaxStdoutLength, for stdout and stderr alike
AGENT_TRUNCATED_SUFFIX = "--output truncated--"  # its OutputTruncatedSuffix
STDOUT_LIMIT = 24_000  # GetCommandInvocation StandardOutputContent
STDERR_LIMIT = 8_000  # GetCommandInvocation StandardErrorContent: its first 8,000 characters
LIST_OUTPUT_LIMIT = 2_500  # iohandler.MaximumPluginOutputSize (ListCommandInvocations Output)
MAX_DOCUMENT_BYTES = 64 * 1024  # SSM quotas: a document's content, 64 KB (MaxDocumentSizeExceeded)
DEFAULT_STEP_TIMEOUT_S = 3600
MIN_STEP_TIMEOUT_S, MAX_STEP_TIMEOUT_S = 5, 172_800
STOPPED_PREEMPTIVELY_EXIT_CODE = 137  # appconfig.CommandStoppedPreemptivelyExitCode: 128 + SIGKILL
TERMINAL = ("Success", "Failed", "TimedOut", "Cancelled")
# The agent streams a running script's output to CloudWatch as it is written (its
# cloudwatchlogspublisher tails the output files), not only at the end: every this many seconds.
STREAM_INTERVAL_S = 1.0
EXIT_WITH_SUCCESS, EXIT_WITH_FAILURE = 168, 169  # contracts.ExitWithSuccess / ExitWithFailure

_lock = threading.RLock()
_sandboxes: dict[str, Sandbox] = {}
_runs: dict[tuple[str, str], InvocationRun] = {}
_installed = False
_log = logging.getLogger(__name__)
_request = threading.local()  # CloudWatchOutputConfig of the SendCommand being handled


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso_duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def _raw(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def _agent_prefix(data: bytes) -> str:
    """runpluginutil.go: pluginutil.StringPrefix(output, 24000, "--output truncated--") on stdout
    and stderr: Go lengths are bytes, and an output of exactly the limit is cut too."""
    if len(data) >= AGENT_OUTPUT_LIMIT:
        data = data[: AGENT_OUTPUT_LIMIT - len(AGENT_TRUNCATED_SUFFIX)] + AGENT_TRUNCATED_SUFFIX.encode()
    return data.decode(errors="replace")  # Go's JSON encoding replaces invalid UTF-8 the same way


_ERROR_TITLE = "\n----------ERROR-------\n"
_TRUNCATE_OUT = "\n---Output truncated---"
_TRUNCATE_ERROR = "\n---Error truncated----"


def _plugin_output(stdout: str, stderr: str, capacity: int = LIST_OUTPUT_LIMIT) -> str:
    """iohandler.go TruncateOutput: a plugin's Output (stdout, error title, stderr) in capacity."""
    title = _ERROR_TITLE if stderr else ""
    space = capacity - len(title)
    if len(stdout) + len(stderr) < space:
        return stdout + title + stderr
    if len(stdout) > space // 2 and len(stderr) > space // 2:
        size = (space - len(_TRUNCATE_ERROR) - len(_TRUNCATE_OUT)) // 2
        return stdout[:size] + _TRUNCATE_OUT + title + stderr[:size] + _TRUNCATE_ERROR
    if len(stdout) <= space // 2:
        size = space - len(_TRUNCATE_ERROR)
        return stdout + title + stderr[: size - len(stdout)] + _TRUNCATE_ERROR
    size = space - len(_TRUNCATE_OUT)
    return stdout[: size - len(stderr)] + _TRUNCATE_OUT + title + stderr


class _Error(SSMException):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)


@dataclass
class StepRun:
    """One plugin (document step) of one invocation."""

    name: str
    action: str
    inputs: dict[str, Any]
    status: str = "Pending"
    status_details: str = "Pending"
    response_code: int = -1
    stdout: str = ""
    stderr: str = ""
    started: dt.datetime | None = None
    finished: dt.datetime | None = None


@dataclass
class InvocationRun:
    """One command on one sandbox instance."""

    command: Command
    instance_id: str
    document_name: str
    document_version: str
    region: str
    steps: list[StepRun]
    requested: dt.datetime = field(default_factory=_now)
    status: str = "Pending"
    status_details: str = "Pending"
    process: subprocess.Popen[bytes] | None = None
    cancelled: bool = False
    log_group: str = ""  # CloudWatchOutputConfig: stdout/stderr also go to this log group
    cloudwatch_error: str = ""  # why the agent stopped streaming (a refused call), if it did
    streamed: dict[str, int] = field(default_factory=dict)  # log stream -> bytes already sent
    log_group_ready: bool = False  # the group was created (or found) and looked up

    def step(self, plugin_name: str | None) -> StepRun:
        if plugin_name is None:
            if len(self.steps) != 1:
                raise _Error(
                    "InvalidPluginName",
                    "The document has several steps: give the PluginName (step name) to read.",
                )
            return self.steps[0]
        for step in self.steps:
            if step.name == plugin_name:
                return step
        raise _Error("InvocationDoesNotExist", f"No step named {plugin_name} in this invocation.")

    def invocation_view(self, plugin_name: str | None) -> dict[str, Any]:
        with _lock:
            step = self.step(plugin_name)
            done = step.status in TERMINAL
            started = step.started
            finished = step.finished
            elapsed = ((finished or _now()) - started).total_seconds() if started else 0.0
            return {
                "CommandId": self.command.command_id,
                "InstanceId": self.instance_id,
                "Comment": self.command.comment,
                "DocumentName": self.document_name,
                "DocumentVersion": self.document_version,
                "PluginName": step.name,
                "ResponseCode": step.response_code,
                "ExecutionStartDateTime": started.isoformat() if started else "",
                "ExecutionElapsedTime": _iso_duration(elapsed),
                "ExecutionEndDateTime": finished.isoformat() if finished else "",
                "Status": step.status,
                "StatusDetails": step.status_details,
                "StandardOutputContent": step.stdout[:STDOUT_LIMIT] if done else "",
                "StandardOutputUrl": "",
                "StandardErrorContent": step.stderr[:STDERR_LIMIT] if done else "",
                "StandardErrorUrl": "",
                "CloudWatchOutputConfig": {
                    "CloudWatchLogGroupName": self.log_group,
                    "CloudWatchOutputEnabled": bool(self.log_group),
                },
            }

    def list_view(self, details: bool) -> dict[str, Any]:
        with _lock:
            view: dict[str, Any] = {
                "CommandId": self.command.command_id,
                "InstanceId": self.instance_id,
                "InstanceName": "",
                "Comment": self.command.comment,
                "DocumentName": self.document_name,
                "DocumentVersion": self.document_version,
                "RequestedDateTime": self.requested,
                "Status": self.status,
                "StatusDetails": self.status_details,
                "StandardOutputUrl": "",
                "StandardErrorUrl": "",
                "CommandPlugins": [],
            }
            if details:
                for step in self.steps:
                    output = _plugin_output(step.stdout, step.stderr)
                    plugin: dict[str, Any] = {
                        "Name": step.name,
                        "Status": step.status,
                        "StatusDetails": step.status_details,
                        "ResponseCode": step.response_code,
                        "Output": output if step.status in TERMINAL else "",
                        "StandardOutputUrl": "",
                        "StandardErrorUrl": "",
                    }
                    if step.started:
                        plugin["ResponseStartDateTime"] = step.started
                    if step.finished:
                        plugin["ResponseFinishDateTime"] = step.finished
                    view["CommandPlugins"].append(plugin)
            return view


# --------------------------------------------------------------------------- registry


def register(sandbox: Sandbox) -> None:
    install()
    with _lock:
        _sandboxes[sandbox.instance_id] = sandbox


def unregister(instance_id: str) -> None:
    with _lock:
        _sandboxes.pop(instance_id, None)
        runs = [run for key, run in _runs.items() if key[1] == instance_id]
    for run in runs:
        _cancel(run)


def sandbox_for(instance_id: str) -> Sandbox | None:
    with _lock:
        return _sandboxes.get(instance_id)


def kill_processes(run: InvocationRun) -> None:
    """SIGKILL the run's script (the instance lost power); the invocation reads as it ends."""
    with _lock:
        process = run.process
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def runs_for(instance_id: str) -> list[InvocationRun]:
    with _lock:
        return [run for key, run in _runs.items() if key[1] == instance_id]


def _cancel(run: InvocationRun) -> None:
    with _lock:
        run.cancelled = True
        process = run.process
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _online(sandbox: Sandbox, account_id: str, region: str) -> bool:
    if not sandbox.online or not sandbox.powered:
        return False
    try:
        instance = ec2_backends[account_id][region].get_instance(sandbox.instance_id)
    except Exception:
        return False
    return bool(instance.state == "running")


# --------------------------------------------------------------------------- running


# SSM publishes this event to EventBridge on every invocation status change (best effort).
STATUS_EVENT = "EC2 Command Invocation Status-change Notification"


def _iso_ms(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _emit_status_event(run: InvocationRun, status: str) -> None:
    """The invocation's status-change event, as SSM sends it, to the region's default bus (the
    local cloud delivers it to the rules' targets: local/events.py)."""
    from moto.events.models import events_backends

    account = run.command.account_id
    detail = {
        "command-id": run.command.command_id,
        "document-name": run.document_name,
        "instance-id": run.instance_id,
        "requested-date-time": _iso_ms(run.requested),
        "status": status,
    }
    entry = {
        "Source": "aws.ssm",
        "DetailType": STATUS_EVENT,
        "Detail": json.dumps(detail),
        "Resources": [f"arn:aws:ec2:{run.region}:{account}:instance/{run.instance_id}"],
        "Time": _iso_ms(_now()).replace(".000Z", "Z"),
    }
    try:
        events_backends[account][run.region].put_events([entry])
    except Exception as error:  # best effort, as SSM's: a step's safety net covers a lost event
        _log.warning("status-change event of %s not published: %s", run.command.command_id, error)


def _set_status(run: InvocationRun, status: str, details: str) -> None:
    with _lock:
        changed = run.status != status
        run.status = status
        run.status_details = details
        command = run.command
        runs = [r for key, r in _runs.items() if key[0] == command.command_id]
        statuses = [r.status for r in runs]
        if all(s in TERMINAL for s in statuses):
            failed = [s for s in statuses if s != "Success"]
            command.status = failed[0] if failed else "Success"
            command.status_details = details if len(runs) == 1 else command.status
        elif any(s == "InProgress" for s in statuses) or any(s in TERMINAL for s in statuses):
            command.status = command.status_details = "InProgress"
        command.completed_count = sum(1 for s in statuses if s in TERMINAL)
        command.error_count = sum(1 for s in statuses if s in ("Failed", "TimedOut"))
    if changed:
        _emit_status_event(run, status)


def _run_invocation(run: InvocationRun, sandbox: Sandbox) -> None:
    account_id = run.command.account_id
    delivery_timeout = sandbox.delivery_timeout_s
    if delivery_timeout is None:
        delivery_timeout = float(run.command.timeout_seconds)
    delivery_deadline = time.monotonic() + delivery_timeout
    while not _online(sandbox, account_id, run.region):
        if run.cancelled:
            _finish_all(run, "Cancelled", "Cancelled")
            return
        if time.monotonic() >= delivery_deadline:
            _finish_all(run, "TimedOut", "DeliveryTimedOut")
            return
        time.sleep(0.05)
    _set_status(run, "InProgress", "InProgress")
    outcome = "Success"
    exit_document = False
    for index, step in enumerate(run.steps):
        if run.cancelled:
            outcome = "Cancelled"
        if outcome == "Cancelled" or exit_document:
            with _lock:
                step.status = step.status_details = "Cancelled" if outcome == "Cancelled" else "Skipped"
                if outcome != "Cancelled":
                    step.response_code = 0
            continue
        status = _run_step(run, sandbox, index, step)
        if outcome == "Success":
            outcome = status
        exit_document = _ends_document(step, status)
        if run.log_group and step.action != "aws:runShellScript":  # a script streamed as it ran
            _to_cloudwatch(run, sandbox, step)
    details = {"Success": "Success", "Failed": "Failed", "TimedOut": "ExecutionTimedOut"}.get(
        outcome, outcome
    )
    _set_status(run, outcome, details)


def _ends_document(step: StepRun, status: str) -> bool:
    """runpluginutil.go getShouldPluginSkipBasedOnControlFlow: later steps still run after a
    failure unless this step's inputs say ``onFailure: exit`` (a Failed step only, not TimedOut)
    or ``onSuccess: exit``, or it exited 168 (success) / 169 (failure)."""
    if step.response_code in (EXIT_WITH_SUCCESS, EXIT_WITH_FAILURE):
        return True
    if status == "Failed" and step.inputs.get("onFailure") in ("exit", "successAndExit"):
        return True
    return status == "Success" and step.inputs.get("onSuccess") == "exit"


def _finish_all(run: InvocationRun, status: str, details: str) -> None:
    with _lock:
        for step in run.steps:
            step.status, step.status_details = status, details
    _set_status(run, status, details)


def _execution_timeout(value: Any) -> int:
    """pluginutil.ValidateExecutionTimeout: an int (a float's integer part); unreadable, under 5
    or over 172800 s: the default 3600."""
    text = str(value)
    try:
        seconds = int(text)
    except ValueError:
        try:
            seconds = int(float(text))
        except ValueError:
            seconds = DEFAULT_STEP_TIMEOUT_S
    if not MIN_STEP_TIMEOUT_S <= seconds <= MAX_STEP_TIMEOUT_S:
        return DEFAULT_STEP_TIMEOUT_S
    return seconds


def _run_step(run: InvocationRun, sandbox: Sandbox, index: int, step: StepRun) -> str:
    with _lock:
        step.status = step.status_details = "InProgress"
        step.started = _now()
    if step.action == "aws:downloadContent":
        try:
            with sandbox.acting_as_instance():
                said = download_content.download(sandbox, run.command.command_id, run.region, step.inputs)
        except download_content.DownloadFailed as error:
            return _end_step(step, "Failed", 1, "", f"{error}\n")
        except OSError as error:  # the destination cannot be written: the plugin fails the step
            return _end_step(step, "Failed", 1, "", f"failed to download content: {error}\n")
        return _end_step(step, "Success", 0, said, "")
    if step.action != "aws:runShellScript":
        return _end_step(
            step,
            "Failed",
            1,
            "",
            f"the sandbox agent runs aws:runShellScript and aws:downloadContent only, not {step.action}\n",
        )
    commands = step.inputs.get("runCommand", [])
    lines = [commands] if isinstance(commands, str) else [str(line) for line in commands]
    timeout = _execution_timeout(step.inputs.get("timeoutSeconds", DEFAULT_STEP_TIMEOUT_S))
    # runscript.go: <orchestration>/<command-id>/<step name, ':' removed>/_script.sh, 0700
    folder = sandbox.orchestration_dir / run.command.command_id / step.name.replace(":", "")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    script_path = folder / "_script.sh"
    script_path.write_text("\n".join(lines) + "\n")  # pluginutil.CreateScriptFile
    script_path.chmod(0o700)
    working = str(step.inputs.get("workingDirectory") or "")
    if not os.path.isabs(working):
        downloads = sandbox.orchestration_dir / run.command.command_id / "downloads" / working
        # else the agent's own working directory: / for its systemd unit
        working = str(downloads) if working and downloads.is_dir() else str(sandbox.root)
    stdout_path, stderr_path = folder / "stdout", folder / "stderr"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            sandbox.on_host(["sh", "-c", str(script_path)]),
            cwd=working,
            env=sandbox.script_env(run.region, run.command.command_id),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # Setpgid: the kill reaches the whole process group
        )
        with _lock:
            run.process = process
        timed_out = False
        try:
            code = _wait_streaming(run, sandbox, step, process, timeout, stdout_path, stderr_path)
        except subprocess.TimeoutExpired:
            # executers_unix.go killProcess: SIGKILL to the group at once, no SIGTERM: no trap runs
            timed_out = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = STOPPED_PREEMPTIVELY_EXIT_CODE
    if run.log_group:
        _stream_files(run, sandbox, step, stdout_path, stderr_path, final=True)
    stdout = stdout_path.read_bytes()
    stderr = stderr_path.read_bytes()
    if run.cancelled:
        return _end_step(step, "Cancelled", -1, stdout, stderr)
    if timed_out or code == STOPPED_PREEMPTIVELY_EXIT_CODE:
        # pluginutil_unix.go GetStatus: 137 reads as TimedOut, whoever exited with it; no
        # "failed to run commands" line then (runscript.go marks only Failed steps)
        return _end_step(step, "TimedOut", STOPPED_PREEMPTIVELY_EXIT_CODE, stdout, stderr)
    if code != 0:
        # MarkAsFailed -> AppendError: the message right after the script's stderr, no newlines
        failure = f"failed to run commands: exit status {code}".encode()
        return _end_step(step, "Failed", code, stdout, stderr + failure)
    return _end_step(step, "Success", 0, stdout, stderr)


def _end_step(step: StepRun, status: str, code: int, stdout: bytes | str, stderr: bytes | str) -> str:
    with _lock:
        step.stdout, step.stderr = _agent_prefix(_raw(stdout)), _agent_prefix(_raw(stderr))
        step.response_code = code
        step.status = status
        step.status_details = "ExecutionTimedOut" if status == "TimedOut" else status
        step.finished = _now()
    return status


def _wait_streaming(
    run: InvocationRun,
    sandbox: Sandbox,
    step: StepRun,
    process: subprocess.Popen[bytes],
    timeout: float,
    stdout_path: Path,
    stderr_path: Path,
) -> int:
    """process.wait(timeout), streaming the complete lines written so far every
    STREAM_INTERVAL_S while it runs (with CloudWatchOutputConfig)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return process.wait(timeout=max(0.0, min(STREAM_INTERVAL_S, left)))
        except subprocess.TimeoutExpired:
            if left <= STREAM_INTERVAL_S:
                raise
        if run.log_group:
            _stream_files(run, sandbox, step, stdout_path, stderr_path, final=False)


def _stream_files(
    run: InvocationRun, sandbox: Sandbox, step: StepRun, stdout_path: Path, stderr_path: Path, *, final: bool
) -> None:
    """What the script wrote since the last upload, whole lines only until it ended (the
    stream keeps everything: the 24,000-character cut is GetCommandInvocation's)."""
    texts: dict[str, str] = {}
    for stream, path in (("stdout", stdout_path), ("stderr", stderr_path)):
        name = _stream_name(run, step, stream)
        data = path.read_bytes()[run.streamed.get(name, 0) :]
        if not final:
            data = data[: data.rfind(b"\n") + 1]
        if data:
            texts[stream] = data.decode(errors="replace")
            run.streamed[name] = run.streamed.get(name, 0) + len(data)
    if texts:
        _to_cloudwatch(run, sandbox, step, texts)


def _stream_name(run: InvocationRun, step: StepRun, stream: str) -> str:
    return f"{run.command.command_id}/{run.instance_id}/{step.name}/{stream}"


def _to_cloudwatch(
    run: InvocationRun, sandbox: Sandbox, step: StepRun, texts: dict[str, str] | None = None
) -> None:
    """What the agent uploads with CloudWatchOutputConfig: <command>/<instance>/<step>/stdout|stderr
    (`texts`, else the step's whole output), with the instance's own role: it creates the group
    (an existing one is fine), looks it up, and on any refusal stops streaming this command's
    output (the command itself goes on)."""
    if not run.log_group:
        return
    logs = boto3.client(
        "logs",
        region_name=run.region,
        endpoint_url=sandbox.endpoint_url,
        aws_access_key_id=sandbox.access_key_id,
        aws_secret_access_key="testing",  # moto accepts any secret
    )
    try:
        with sandbox.acting_as_instance():
            if not run.log_group_ready:
                try:
                    logs.create_log_group(logGroupName=run.log_group)
                except ClientError as error:
                    if error.response["Error"]["Code"] != "ResourceAlreadyExistsException":
                        raise
                logs.describe_log_groups(logGroupNamePrefix=run.log_group)
                run.log_group_ready = True
            stamp = int(time.time() * 1000)
            outputs = texts if texts is not None else {"stdout": step.stdout, "stderr": step.stderr}
            for stream, text in outputs.items():
                if not text:
                    continue
                name = _stream_name(run, step, stream)
                with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
                    logs.create_log_stream(logGroupName=run.log_group, logStreamName=name)
                events = [{"timestamp": stamp, "message": line} for line in text.splitlines() or [text]]
                logs.put_log_events(logGroupName=run.log_group, logStreamName=name, logEvents=events)
    except (ClientError, BotoCoreError) as error:
        with _lock:
            run.log_group = ""  # streaming off for the rest of this command
            run.cloudwatch_error = str(error)


# --------------------------------------------------------------------------- moto hooks


_original_send_command = SimpleSystemManagerBackend.send_command
_original_get_invocation = SimpleSystemManagerBackend.get_command_invocation
_send_signature = inspect.signature(_original_send_command)
_original_response_send_command = SimpleSystemManagerResponse.send_command


def _target_instance_ids(
    backend: SimpleSystemManagerBackend, targets: list[dict[str, Any]] | None
) -> list[str]:
    ids: list[str] = []
    for target in targets or []:
        key, values = target.get("Key", ""), target.get("Values", [])
        if key == "InstanceIds":
            ids.extend(values)
        else:
            ec2 = ec2_backends[backend.account_id][backend.region_name]
            for reservation in ec2.all_reservations(filters={key: values}):
                ids.extend(instance.id for instance in reservation.instances)
    return ids


def _send_command(self: SimpleSystemManagerBackend, *args: Any, **kwargs: Any) -> Command:
    arguments = _send_signature.bind(self, *args, **kwargs).arguments
    instance_ids = list(arguments.get("instance_ids") or []) + _target_instance_ids(
        self, arguments.get("targets")
    )
    with _lock:
        sandboxes = {i: _sandboxes[i] for i in instance_ids if i in _sandboxes}
    if not sandboxes:
        return _original_send_command(self, *args, **kwargs)
    strangers = [i for i in instance_ids if i not in sandboxes]
    if strangers:
        raise _Error(
            "InvalidInstanceId", f"Instances {strangers} not in a valid state for account {self.account_id}"
        )
    name = arguments.get("document_name") or ""
    document = self._get_documents(name).find()  # InvalidDocument when absent
    content = document.content_json
    if document.document_type != "Command" or str(content.get("schemaVersion")) != "2.2":
        raise _Error("InvalidDocument", f"{name} is not a schemaVersion 2.2 Command document")
    parameters = resolve_parameters(content.get("parameters"), arguments.get("parameters"))
    steps_spec = content.get("mainSteps") or []
    # The document the instance receives, parameters in place, is held to the document size limit.
    resolved = json.dumps(substitute(content, parameters), separators=(",", ":"))
    if len(resolved.encode()) > MAX_DOCUMENT_BYTES:
        raise _Error(
            "MaxDocumentSizeExceeded",
            f"The size limit of a document is 64 KB: {name} with its parameters is "
            f"{len(resolved.encode()):,} bytes",
        )
    command = _original_send_command(self, *args, **kwargs)
    # moto adds every EC2 instance of the region when Targets is empty: keep the ones asked for.
    instance_ids = list(dict.fromkeys(instance_ids))
    command.instance_ids = instance_ids
    command.invocations = [command.invocation_response(i, "aws:runShellScript") for i in instance_ids]
    command.target_count = len(instance_ids)
    command.status = command.status_details = "Pending"
    command.completed_count = 0
    for instance_id in instance_ids:
        steps = [
            StepRun(
                name=str(spec.get("name", spec.get("action", "step"))),
                action=str(spec.get("action", "")),
                inputs=substitute(spec.get("inputs") or {}, parameters),
            )
            for spec in steps_spec
        ]
        cloudwatch = getattr(_request, "cloudwatch", None) or {}
        run = InvocationRun(
            command=command,
            instance_id=instance_id,
            document_name=name,
            document_version=document.document_version,
            region=self.region_name,
            steps=steps,
            log_group=str(cloudwatch.get("CloudWatchLogGroupName") or "")
            if cloudwatch.get("CloudWatchOutputEnabled")
            else "",
        )
        with _lock:
            _runs[(command.command_id, instance_id)] = run
        _emit_status_event(run, "Pending")
    for instance_id in instance_ids:
        run = _runs[(command.command_id, instance_id)]
        threading.Thread(
            target=_run_invocation,
            args=(run, sandboxes[instance_id]),
            daemon=True,
            name=f"ssm-sandbox-{command.command_id[:8]}",
        ).start()
    return command


def _get_command_invocation(
    self: SimpleSystemManagerBackend, command_id: str, instance_id: str, plugin_name: str | None
) -> dict[str, Any]:
    with _lock:
        run = _runs.get((command_id, instance_id))
        sandbox = _sandboxes.get(instance_id)
    if run is None:
        return _original_get_invocation(self, command_id, instance_id, plugin_name)
    delay = sandbox.invocation_delay_s if sandbox is not None else 0.0
    if delay and (_now() - run.requested).total_seconds() < delay:
        raise _Error("InvocationDoesNotExist", "An error occurred (InvocationDoesNotExist)")
    return run.invocation_view(plugin_name)


def _moto_invocation_view(command: Command, invocation: dict[str, Any], details: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "CommandId": command.command_id,
        "InstanceId": invocation["InstanceId"],
        "InstanceName": "",
        "Comment": command.comment,
        "DocumentName": command.document_name,
        "DocumentVersion": "1",
        "RequestedDateTime": command.requested_date_time,
        "Status": invocation["Status"],
        "StatusDetails": invocation["StatusDetails"],
        "CommandPlugins": [],
    }
    if details:
        view["CommandPlugins"] = [
            {
                "Name": invocation["PluginName"],
                "Status": invocation["Status"],
                "StatusDetails": invocation["StatusDetails"],
                "ResponseCode": invocation["ResponseCode"],
                "Output": invocation["StandardOutputContent"],
            }
        ]
    return view


def _list_command_invocations(
    self: SimpleSystemManagerBackend,
    command_id: str | None = None,
    instance_id: str | None = None,
    details: bool = False,
    filters: list[dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    commands = [self.get_command_by_id(command_id)] if command_id else list(self._commands)
    views: list[dict[str, Any]] = []
    for command in commands:
        for invocation in command.invocations:
            target = invocation["InstanceId"]
            if instance_id and target != instance_id:
                continue
            with _lock:
                run = _runs.get((command.command_id, target))
            views.append(
                run.list_view(details) if run else _moto_invocation_view(command, invocation, details)
            )
    for item in filters or []:
        key, value = item.get("key") or item.get("Key"), item.get("value") or item.get("Value")
        if key == "Status":
            views = [v for v in views if v["Status"] == value]
        elif key == "DocumentName":
            views = [v for v in views if v["DocumentName"] == value]
    views.sort(key=lambda v: v["RequestedDateTime"], reverse=True)
    return views


def _describe_instance_information(
    self: SimpleSystemManagerBackend, filters: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    wanted_ids: set[str] | None = None
    wanted_ping: set[str] | None = None
    for item in filters or []:
        key = item.get("key") or item.get("Key")
        values = set(item.get("valueSet") or item.get("Values") or [])
        if key == "InstanceIds":
            wanted_ids = values
        elif key == "PingStatus":
            wanted_ping = values
    with _lock:
        sandboxes = list(_sandboxes.values())
    ec2 = ec2_backends[self.account_id][self.region_name]
    result = []
    for sandbox in sandboxes:
        try:
            instance = ec2.get_instance(sandbox.instance_id)
        except Exception:  # noqa: S112 - not an instance of this account and region: not listed
            continue
        if wanted_ids is not None and sandbox.instance_id not in wanted_ids:
            continue
        ping = "Online" if _online(sandbox, self.account_id, self.region_name) else "ConnectionLost"
        if wanted_ping is not None and ping not in wanted_ping:
            continue
        result.append(
            {
                "InstanceId": sandbox.instance_id,
                "PingStatus": ping,
                "LastPingDateTime": sandbox.last_ping,
                "AgentVersion": "3.3.0.0",
                "IsLatestVersion": True,
                "PlatformType": "Linux",
                "PlatformName": "Ubuntu",
                "PlatformVersion": "22.04",
                "ResourceType": "EC2Instance",
                "IPAddress": getattr(instance, "private_ip", "") or "",
                "ComputerName": sandbox.hostname,
            }
        )
    return result


def _cancel_command(
    self: SimpleSystemManagerBackend, command_id: str, instance_ids: list[str] | None = None
) -> None:
    command = self.get_command_by_id(command_id)
    for instance_id in instance_ids or command.instance_ids:
        with _lock:
            run = _runs.get((command_id, instance_id))
        if run is not None:
            if run.status not in TERMINAL:
                _cancel(run)
            continue
        for invocation in command.invocations:
            if invocation["InstanceId"] == instance_id and invocation["Status"] not in TERMINAL:
                invocation["Status"] = invocation["StatusDetails"] = "Cancelled"


def _response_send_command(self: SimpleSystemManagerResponse) -> ActionResult:
    _request.cloudwatch = self._get_param("CloudWatchOutputConfig")
    try:
        return _original_response_send_command(self)
    finally:
        _request.cloudwatch = None


def _response_cancel_command(self: SimpleSystemManagerResponse) -> ActionResult:
    self.ssm_backend.cancel_command(  # type: ignore[attr-defined]
        command_id=self._get_param("CommandId"), instance_ids=self._get_param("InstanceIds")
    )
    return ActionResult({})


def _response_list_command_invocations(self: SimpleSystemManagerResponse) -> ActionResult:
    invocations = self.ssm_backend.list_command_invocations(  # type: ignore[attr-defined]
        command_id=self._get_param("CommandId"),
        instance_id=self._get_param("InstanceId"),
        details=bool(self._get_param("Details", False)),
        filters=self._get_param("Filters"),
    )
    return ActionResult({"CommandInvocations": invocations})


def _response_describe_instance_information(self: SimpleSystemManagerResponse) -> ActionResult:
    filters = (self._get_param("InstanceInformationFilterList") or []) + (self._get_param("Filters") or [])
    information = self.ssm_backend.describe_instance_information(filters=filters)  # type: ignore[attr-defined]
    return ActionResult({"InstanceInformationList": information})


def install() -> None:
    """Patch moto's SSM backend and responses once per process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        backend: Any = SimpleSystemManagerBackend
        response: Any = SimpleSystemManagerResponse
        backend.send_command = _send_command
        backend.get_command_invocation = _get_command_invocation
        backend.list_command_invocations = _list_command_invocations
        backend.describe_instance_information = _describe_instance_information
        backend.cancel_command = _cancel_command
        power.install()
        response.send_command = _response_send_command
        response.cancel_command = _response_cancel_command
        response.list_command_invocations = _response_list_command_invocations
        response.describe_instance_information = _response_describe_instance_information
        _installed = True
