"""The sandbox agent behaves like SSM Run Command: statuses, output, timeouts, delivery, errors."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError

from local.sandbox import Sandbox, run_document, send_document, wait_invocation
from local.sandbox.documents import DocumentRun
from tests.fixtures import CREDENTIALS, REGION, Aws, launch_instance

REPO = Path(__file__).resolve().parents[2]


def make_document(aws: Aws, name: str, script: str, *, steps: int = 1) -> None:
    content = {
        "schemaVersion": "2.2",
        "description": "agent test",
        "parameters": {
            "Seconds": {
                "type": "String",
                "default": "0",
                "allowedPattern": "^[0-9]{1,3}(\\.[0-9])?$",
                "description": "how long to sleep",
            },
            "Code": {
                "type": "String",
                "default": "0",
                "allowedPattern": "^[0-9]{1,3}$",
                "description": "exit",
            },
            "executionTimeout": {
                "type": "String",
                "default": "60",
                "allowedPattern": "^[0-9]{1,5}$",
                "description": "limit",
            },
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": f"step{i}",
                "inputs": {"timeoutSeconds": "{{ executionTimeout }}", "runCommand": script.splitlines()},
            }
            for i in range(1, steps + 1)
        ],
    }
    with contextlib.suppress(ClientError):
        aws.ssm.delete_document(Name=name)
    aws.ssm.create_document(
        Content=yaml.safe_dump(content), Name=name, DocumentType="Command", DocumentFormat="YAML"
    )


SLEEPER = textwrap.dedent("""\
    #!/bin/bash
    set -euo pipefail
    echo "starting on $(uname -n)"
    echo "to stderr" >&2
    sleep '{{ Seconds }}'
    if [[ '{{ Code }}' != 0 ]]; then exit '{{ Code }}'; fi
    echo '{"ok": true}'
    """)


@pytest.fixture
def sleeper(aws: Aws) -> str:
    make_document(aws, "sandbox-sleeper", SLEEPER)
    return "sandbox-sleeper"


def test_a_command_goes_pending_in_progress_success(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    sandbox = make_sandbox()
    command_id = send_document(aws.ssm, sandbox, sleeper, Seconds="1")
    run = wait_invocation(aws.ssm, sandbox, command_id, poll_s=0.05)
    assert run.statuses_seen[-2:] == ["InProgress", "Success"]
    assert run.response_code == 0
    assert run.stdout.splitlines() == [
        "starting on " + subprocess.check_output(["uname", "-n"], text=True).strip(),
        '{"ok": true}',
    ]
    assert run.stderr == "to stderr\n"
    invocation = aws.ssm.get_command_invocation(
        CommandId=command_id, InstanceId=sandbox.instance_id, PluginName="step1"
    )
    assert invocation["PluginName"] == "step1"
    assert invocation["ExecutionElapsedTime"].startswith("PT1.")
    command = aws.ssm.list_commands(CommandId=command_id)["Commands"][0]
    assert (command["Status"], command["CompletedCount"]) == ("Success", 1)


def test_output_is_empty_until_the_end_and_the_script_sees_its_parameters(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    sandbox = make_sandbox()
    command_id = send_document(aws.ssm, sandbox, sleeper, Seconds="2")
    time.sleep(0.8)
    invocation = aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
    assert (invocation["Status"], invocation["StandardOutputContent"], invocation["ResponseCode"]) == (
        "InProgress",
        "",
        -1,
    )
    assert wait_invocation(aws.ssm, sandbox, command_id).status == "Success"


def test_a_failing_script_fails_with_its_exit_code(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    sandbox = make_sandbox()
    run = wait_invocation(aws.ssm, sandbox, send_document(aws.ssm, sandbox, sleeper, Code="3"))
    assert (run.status, run.status_details, run.response_code) == ("Failed", "Failed", 3)
    # runscript.go MarkAsFailed: the agent's line right after the script's stderr
    assert run.stderr == "to stderr\nfailed to run commands: exit status 3"


def test_execution_timeout_stops_the_script(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    sandbox = make_sandbox()
    started = time.monotonic()
    run = wait_invocation(
        aws.ssm, sandbox, send_document(aws.ssm, sandbox, sleeper, Seconds="60", executionTimeout="5")
    )
    assert (run.status, run.status_details) == ("TimedOut", "ExecutionTimedOut")
    assert time.monotonic() - started < 15
    assert run.stdout.startswith("starting on")
    leftovers = subprocess.run(
        ["pgrep", "-f", str(sandbox.orchestration_dir)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""


def test_cancel_stops_a_running_command(aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str) -> None:
    sandbox = make_sandbox()
    command_id = send_document(aws.ssm, sandbox, sleeper, Seconds="60")
    time.sleep(0.8)
    aws.ssm.cancel_command(CommandId=command_id, InstanceIds=[sandbox.instance_id])
    run = wait_invocation(aws.ssm, sandbox, command_id, timeout_s=10)
    assert run.status == "Cancelled"
    leftovers = subprocess.run(
        ["pgrep", "-f", str(sandbox.orchestration_dir)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""


def test_output_also_goes_to_cloudwatch_when_asked(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    sandbox = make_sandbox()
    group = f"/ssm/sandbox-{sandbox.instance_id}"
    command_id = aws.ssm.send_command(
        InstanceIds=[sandbox.instance_id],
        DocumentName=sleeper,
        CloudWatchOutputConfig={"CloudWatchLogGroupName": group, "CloudWatchOutputEnabled": True},
    )["Command"]["CommandId"]
    run = wait_invocation(aws.ssm, sandbox, command_id)
    assert run.status == "Success"
    logs = boto3.client("logs", endpoint_url=aws.endpoint_url, **CREDENTIALS)
    stream = f"{command_id}/{sandbox.instance_id}/step1/stdout"
    # The agent streams output beside the command, not before its status: wait for it.
    deadline = time.monotonic() + 20
    messages: list[str] = []
    while not messages and time.monotonic() < deadline:
        with contextlib.suppress(logs.exceptions.ResourceNotFoundException):
            events = logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]
            messages = [event["message"] for event in events]
        time.sleep(0.1)
    assert messages and messages[-1] == '{"ok": true}', messages
    invocation = aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
    assert invocation["CloudWatchOutputConfig"] == {
        "CloudWatchLogGroupName": group,
        "CloudWatchOutputEnabled": True,
    }


WAITER = textwrap.dedent("""\
    #!/bin/bash
    set -euo pipefail
    echo '{"progress": {"bytes": 1}}' >&2
    printf 'half a line'
    for _ in $(seq 600); do [[ -e go ]] && break; sleep 0.1; done
    echo ' done' >&2
    echo '{"ok": true}'
    """)


def test_output_streams_to_cloudwatch_while_the_command_runs(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given a script that writes a line, then waits for a file before it ends
    make_document(aws, "sandbox-waiter", WAITER)
    sandbox = make_sandbox()
    group = f"/ssm/sandbox-{sandbox.instance_id}"
    command_id = aws.ssm.send_command(
        InstanceIds=[sandbox.instance_id],
        DocumentName="sandbox-waiter",
        CloudWatchOutputConfig={"CloudWatchLogGroupName": group, "CloudWatchOutputEnabled": True},
    )["Command"]["CommandId"]
    logs = boto3.client("logs", endpoint_url=aws.endpoint_url, **CREDENTIALS)

    def messages(stream: str) -> list[str]:
        name = f"{command_id}/{sandbox.instance_id}/step1/{stream}"
        with contextlib.suppress(logs.exceptions.ResourceNotFoundException):
            return [
                e["message"] for e in logs.get_log_events(logGroupName=group, logStreamName=name)["events"]
            ]
        return []

    # When its first line is written: the stream has it while the command still runs, and a
    # line not ended yet is not sent
    deadline = time.monotonic() + 20
    while not messages("stderr") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert messages("stderr") == ['{"progress": {"bytes": 1}}']
    status = aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)["Status"]
    assert status == "InProgress"
    assert messages("stdout") == []
    # Then once it ends, the rest follows, each line once
    (sandbox.root / "go").touch()
    assert wait_invocation(aws.ssm, sandbox, command_id).status == "Success"
    deadline = time.monotonic() + 20
    while len(messages("stderr")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert messages("stderr") == ['{"progress": {"bytes": 1}}', " done"]
    assert messages("stdout") == ['half a line{"ok": true}']


def test_an_offline_instance_never_gets_the_command(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    # Given an instance whose agent lost its connection
    sandbox = make_sandbox()
    sandbox.delivery_timeout_s = 1.5
    sandbox.go_offline()
    info = aws.ssm.describe_instance_information(
        InstanceInformationFilterList=[{"key": "InstanceIds", "valueSet": [sandbox.instance_id]}]
    )["InstanceInformationList"]
    assert [(i["InstanceId"], i["PingStatus"]) for i in info] == [(sandbox.instance_id, "ConnectionLost")]
    # When a command is sent
    command_id = send_document(aws.ssm, sandbox, sleeper)
    time.sleep(0.5)
    assert (
        aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)["Status"]
        == "Pending"
    )
    # Then it times out undelivered and never runs
    run = wait_invocation(aws.ssm, sandbox, command_id)
    assert (run.status, run.status_details, run.stdout) == ("TimedOut", "DeliveryTimedOut", "")
    assert not sandbox.orchestration_dir.exists()


def test_a_command_waits_for_the_instance_to_come_back(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    sandbox = make_sandbox()
    sandbox.go_offline()
    command_id = send_document(aws.ssm, sandbox, sleeper)
    time.sleep(0.5)
    sandbox.go_online()
    assert wait_invocation(aws.ssm, sandbox, command_id).status == "Success"
    info = aws.ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [sandbox.instance_id]}]
    )["InstanceInformationList"]
    assert info[0]["PingStatus"] == "Online"
    assert info[0]["PlatformType"] == "Linux"


def test_a_stopped_ec2_instance_is_offline(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    aws.ec2.stop_instances(InstanceIds=[sandbox.instance_id])
    info = aws.ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [sandbox.instance_id]}]
    )["InstanceInformationList"]
    assert info[0]["PingStatus"] == "ConnectionLost"


def test_list_command_invocations_with_details(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    sandbox = make_sandbox()
    command_id = send_document(aws.ssm, sandbox, sleeper)
    wait_invocation(aws.ssm, sandbox, command_id)
    listed = aws.ssm.list_command_invocations(CommandId=command_id, Details=True)["CommandInvocations"]
    assert len(listed) == 1
    assert (listed[0]["InstanceId"], listed[0]["Status"], listed[0]["DocumentName"]) == (
        sandbox.instance_id,
        "Success",
        sleeper,
    )
    plugin = listed[0]["CommandPlugins"][0]
    assert (plugin["Name"], plugin["Status"], plugin["ResponseCode"]) == ("step1", "Success", 0)
    assert '{"ok": true}' in plugin["Output"] and "----------ERROR-------" in plugin["Output"]
    by_instance = aws.ssm.list_command_invocations(InstanceId=sandbox.instance_id)["CommandInvocations"]
    assert [i["CommandId"] for i in by_instance] == [command_id]
    assert by_instance[0]["CommandPlugins"] == []


def test_several_steps_need_a_plugin_name_and_run_on_after_a_failure(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # runpluginutil.go: a failed step ends the document only when it says onFailure: exit (or
    # exits 168/169); otherwise the next step runs and the invocation ends Failed.
    make_document(aws, "sandbox-two-steps", "#!/bin/bash\nexit '{{ Code }}'", steps=2)
    sandbox = make_sandbox()
    command_id = send_document(aws.ssm, sandbox, "sandbox-two-steps", Code="4")
    with pytest.raises(ClientError) as error:
        aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
    assert error.value.response["Error"]["Code"] == "InvalidPluginName"
    run = wait_invocation(aws.ssm, sandbox, command_id)
    first = aws.ssm.get_command_invocation(
        CommandId=command_id, InstanceId=sandbox.instance_id, PluginName="step1"
    )
    second = aws.ssm.get_command_invocation(
        CommandId=command_id, InstanceId=sandbox.instance_id, PluginName="step2"
    )
    assert (run.status, first["Status"], first["ResponseCode"]) == ("Failed", "Failed", 4)
    assert (second["Status"], second["ResponseCode"]) == ("Failed", 4)  # it ran
    command_id = send_document(aws.ssm, sandbox, "sandbox-two-steps", Code="169")
    wait_invocation(aws.ssm, sandbox, command_id)
    second = aws.ssm.get_command_invocation(
        CommandId=command_id, InstanceId=sandbox.instance_id, PluginName="step2"
    )
    assert second["Status"] == "Skipped"  # 169: failed, and the rest of the document skipped
    with pytest.raises(ClientError) as error:
        aws.ssm.get_command_invocation(
            CommandId=command_id, InstanceId=sandbox.instance_id, PluginName="step9"
        )
    assert error.value.response["Error"]["Code"] == "InvocationDoesNotExist"


def test_the_script_runs_as_the_agent_runs_it(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # The agent starts "sh -c <script file>": the #!/bin/bash line decides; without it, sh runs it.
    make_document(aws, "sandbox-no-shebang", 'echo "${BASH_VERSION:-not bash}"')
    make_document(aws, "sandbox-shebang", '#!/bin/bash\necho "${BASH_VERSION:-not bash}"')
    sandbox = make_sandbox()
    plain = wait_invocation(aws.ssm, sandbox, send_document(aws.ssm, sandbox, "sandbox-no-shebang"))
    bash = wait_invocation(aws.ssm, sandbox, send_document(aws.ssm, sandbox, "sandbox-shebang"))
    assert bash.stdout.strip()[0].isdigit()
    if Path("/bin/sh").resolve().name != "bash":
        assert plain.stdout.strip() == "not bash"


def test_invocation_does_not_exist_at_first_when_asked(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    sandbox = make_sandbox()
    sandbox.invocation_delay_s = 0.5
    command_id = send_document(aws.ssm, sandbox, sleeper)
    with pytest.raises(ClientError) as error:
        aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.instance_id)
    assert error.value.response["Error"]["Code"] == "InvocationDoesNotExist"
    assert wait_invocation(aws.ssm, sandbox, command_id).status == "Success"


def test_errors_ssm_would_raise(aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str) -> None:
    sandbox = make_sandbox()
    stranger = launch_instance(aws.ec2)
    cases = [
        ({"InstanceIds": [sandbox.instance_id], "DocumentName": "no-such-document"}, "InvalidDocument"),
        ({"InstanceIds": [sandbox.instance_id, stranger], "DocumentName": sleeper}, "InvalidInstanceId"),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as error:
            aws.ssm.send_command(**kwargs)
        assert error.value.response["Error"]["Code"] == code


def test_other_instances_keep_motos_behaviour(aws: Aws, sleeper: str) -> None:
    stranger = launch_instance(aws.ec2)
    command_id = aws.ssm.send_command(InstanceIds=[stranger], DocumentName=sleeper)["Command"]["CommandId"]
    invocation = aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=stranger)
    assert (invocation["Status"], invocation["StandardOutputContent"]) == ("Success", "")


def test_the_agent_works_with_mock_aws_in_process(tmp_path: Path) -> None:
    # Run in a child process: mock_aws resets every moto backend, the shared server's included.
    program = textwrap.dedent(f"""
        import json, boto3
        from moto import mock_aws
        from local.sandbox import Sandbox, register_documents, run_document
        with mock_aws():
            ec2 = boto3.client("ec2", region_name="us-east-1")
            ssm = boto3.client("ssm", region_name="us-east-1")
            reservation = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)
            instance = reservation["Instances"][0]["InstanceId"]
            register_documents(ssm, ["collect-resources"])
            with Sandbox({str(tmp_path / "instance")!r}, instance, gpu=True) as sandbox:
                run = run_document(ssm, sandbox, "collect-resources")
                print(json.dumps({{"status": run.status, "result": run.result}}))
    """)
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PYTHONPATH": f"{REPO}:{REPO / 'lambdas'}",
    }
    child = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "Success"
    assert outcome["result"]["gpus"][0]["name"] == "NVIDIA A10G"


# --- as the real agent (github.com/aws/amazon-ssm-agent, agent/ paths in local/sandbox/agent.py)

SHELL_VARIABLES = {"PWD", "OLDPWD", "SHLVL", "_"}  # what bash itself sets


def run_script(
    aws: Aws, sandbox: Sandbox, name: str, script: str, **parameters: str
) -> tuple[str, DocumentRun]:
    make_document(aws, name, script)
    command_id = send_document(aws.ssm, sandbox, name, **parameters)
    return command_id, wait_invocation(aws.ssm, sandbox, command_id, timeout_s=30)


def test_the_script_sees_the_agents_environment_plus_aws_ssm_variables_only(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # executers.go prepareEnvironment: os.Environ() + SSM_COMMAND_ID + AWS_SSM_*; no HOME (the
    # agent's systemd unit has no User=), no region, endpoint or credential variables of its own
    sandbox = make_sandbox()
    command_id, run = run_script(aws, sandbox, "sandbox-env", "#!/bin/bash\nenv -0")
    assert run.status == "Success"
    env = dict(item.split("=", 1) for item in run.stdout.split("\0") if item)
    assert {name: env.get(name) for name in env if name.startswith(("AWS_SSM_", "SSM_"))} == {
        "AWS_SSM_INSTANCE_ID": sandbox.instance_id,
        "AWS_SSM_REGION_NAME": REGION,
        "AWS_SSM_PLATFORM_NAME": "Ubuntu",
        "AWS_SSM_PLATFORM_VERSION": "22.04",
        "SSM_COMMAND_ID": command_id,
    }
    for absent in ("HOME", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert absent not in env, absent
    agent = sandbox.agent_environment()
    assert set(env) - SHELL_VARIABLES == set(agent) | {n for n in env if n.startswith(("AWS_SSM_", "SSM_"))}
    assert all(env[name] == value for name, value in agent.items())


def test_a_fresh_image_has_no_aws_cli_no_s5cmd_and_a_bare_python(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # What a stock GPU AMI gives a script: bash, coreutils, curl, python3 without pip modules.
    sandbox = make_sandbox()
    script = textwrap.dedent("""\
        #!/bin/bash
        for tool in aws s5cmd curl python3 sha256sum; do
          command -v "$tool" >/dev/null 2>&1 && echo "$tool yes" || echo "$tool no"
        done
        python3 -c 'import boto3' 2>/dev/null && echo "boto3 yes" || echo "boto3 no"
        """)
    _, run = run_script(aws, sandbox, "sandbox-image", script)
    assert run.status == "Success", run.explain()
    found = dict(line.split() for line in run.stdout.splitlines())
    present = {"curl": "yes", "python3": "yes", "sha256sum": "yes"}
    assert found == {"aws": "no", "s5cmd": "no", "boto3": "no", **present}


def _download_document(aws: Aws, name: str, destination: str, *, on_failure: str | None = None) -> None:
    fetch: dict[str, object] = {
        "sourceType": "S3",
        "sourceInfo": {"path": "{{ Url }}"},
        "destinationPath": destination,
    }
    if on_failure:
        fetch["onFailure"] = on_failure
    content = {
        "schemaVersion": "2.2",
        "description": "download test",
        "parameters": {"Url": {"type": "String", "description": "object URL"}},
        "mainSteps": [
            {"action": "aws:downloadContent", "name": "fetch", "inputs": fetch},
            {
                "action": "aws:runShellScript",
                "name": "useIt",
                "inputs": {"runCommand": ["#!/bin/bash", "pwd", "echo ran"]},
            },
        ],
    }
    with contextlib.suppress(ClientError):
        aws.ssm.delete_document(Name=name)
    aws.ssm.create_document(
        Content=yaml.safe_dump(content), Name=name, DocumentType="Command", DocumentFormat="YAML"
    )


def test_download_content_brings_s5cmd_which_reaches_s3_with_the_instances_credentials(
    aws: Aws, make_sandbox: Callable[..., Sandbox], instance_tools: str
) -> None:
    aws.s3.put_object(Bucket=aws.bucket, Key="probe.txt", Body=b"probe")
    sandbox = make_sandbox()
    tool = sandbox.runtime_root / "tools" / "s5cmd"
    _download_document(aws, "sandbox-download", str(tool))
    run = run_document(aws.ssm, sandbox, "sandbox-download", Url=instance_tools)
    assert run.status == "Success", run.explain()
    assert tool.stat().st_mode & 0o777 == 0o700  # appconfig.ReadWriteExecuteAccess
    # The agent's environment names the region only as AWS_SSM_REGION_NAME.
    script = f'#!/bin/bash\nset -e\nAWS_REGION="$AWS_SSM_REGION_NAME" {tool} --log error cat s3://{aws.bucket}/probe.txt'
    _, used = run_script(aws, sandbox, "sandbox-s3", script)
    assert (used.status, used.stdout) == ("Success", "probe"), used.explain()


def test_download_content_relative_paths_folders_and_failures_follow_the_agent(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    for key in ("kit/a.txt", "kit/sub/b.txt"):
        aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=key.encode())
    sandbox = make_sandbox()
    base = f"https://s3.{REGION}.amazonaws.com/{aws.bucket}"
    _download_document(aws, "sandbox-download-folder", "kit")
    run = run_document(aws.ssm, sandbox, "sandbox-download-folder", Url=f"{base}/kit/")
    assert run.status == "Success", run.explain()
    downloads = sandbox.orchestration_dir / run.command_id / "downloads" / "kit"
    assert (downloads / "a.txt").read_text() == "kit/a.txt"
    assert (downloads / "sub" / "b.txt").read_text() == "kit/sub/b.txt"
    # A missing key fails the step; without onFailure: exit the next step still runs.
    missing = run_document(aws.ssm, sandbox, "sandbox-download-folder", Url=f"{base}/nothing.bin")
    assert missing.status == "Failed" and missing.stdout.splitlines()[-1] == "ran", missing.explain()
    assert missing.other_steps[0][1] == "Failed" and "NoSuchKey" in missing.other_steps[0][2]
    _download_document(aws, "sandbox-download-exit", "x", on_failure="exit")
    stopped = run_document(aws.ssm, sandbox, "sandbox-download-exit", Url=f"{base}/nothing.bin")
    assert stopped.status == "Failed" and "ran" not in stopped.stdout, stopped.explain()
    # Not an S3 URL: the agent's own words.
    bad = run_document(aws.ssm, sandbox, "sandbox-download-exit", Url="https://example.com/a.bin")
    assert "invalid S3 path parameter" in bad.other_steps[0][2], bad.explain()


def test_the_script_file_and_shell_are_the_agents(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # runscript.go: <orchestration>/<command-id>/<step>/_script.sh, mode 0700, run as "sh -c <path>"
    # in the agent's working directory (/ for its unit: the sandbox root)
    sandbox = make_sandbox()
    script = '#!/bin/bash\necho "$0"\nstat -c %a "$0"\npwd\ntail -c 1 "$0" | od -An -c'
    command_id, run = run_script(aws, sandbox, "sandbox-where", script)
    path = sandbox.orchestration_dir / command_id / "step1" / "_script.sh"
    assert run.stdout.split("\n")[:3] == [str(path), "700", str(sandbox.root)]
    assert run.stdout.split("\n")[3].strip() == "\\n"  # lines joined by newlines, one at the end
    assert path.read_text() == script + "\n"
    assert sandbox.orchestration_dir == (
        sandbox.root / "var/lib/amazon/ssm" / sandbox.instance_id / "document/orchestration"
    )


def test_timeout_sigkills_the_process_group_at_once_so_no_trap_runs(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # executers_unix.go killProcess: syscall.Kill(-pid, SIGKILL), no SIGTERM first
    sandbox = make_sandbox()
    script = textwrap.dedent("""\
        #!/bin/bash
        trap 'echo trapped TERM' TERM
        trap 'echo '"'"'{"ok": false, "error": "trapped EXIT"}'"'"'' EXIT
        echo started
        sleep 60 &
        wait
        """)
    started = time.monotonic()
    _, run = run_script(aws, sandbox, "sandbox-trap", script, executionTimeout="5")
    assert (run.status, run.status_details, run.response_code) == ("TimedOut", "ExecutionTimedOut", 137)
    assert time.monotonic() - started < 12
    assert run.stdout == "started\n"  # neither trap ran
    assert run.stderr == ""  # no "failed to run commands" line for a TimedOut step


def test_exit_code_137_reads_as_timed_out_and_short_timeouts_as_3600(
    aws: Aws, make_sandbox: Callable[..., Sandbox], sleeper: str
) -> None:
    # pluginutil_unix.go GetStatus: 137 is TimedOut whoever exits with it (an OOM-killed child too);
    # pluginutil.go ValidateExecutionTimeout: a timeoutSeconds under 5 becomes 3600
    sandbox = make_sandbox()
    killed = wait_invocation(aws.ssm, sandbox, send_document(aws.ssm, sandbox, sleeper, Code="137"))
    assert (killed.status, killed.status_details, killed.response_code) == (
        "TimedOut",
        "ExecutionTimedOut",
        137,
    )
    short = wait_invocation(
        aws.ssm, sandbox, send_document(aws.ssm, sandbox, sleeper, Seconds="2", executionTimeout="1")
    )
    assert short.status == "Success"


def test_output_keeps_the_agents_prefix_and_marker(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # runpluginutil.go: StringPrefix(out, 24000, "--output truncated--") for stdout and stderr;
    # GetCommandInvocation shows stderr's first 8,000 characters; ListCommandInvocations' Output
    # is iohandler.go TruncateOutput at 2,500
    sandbox = make_sandbox()
    script = textwrap.dedent("""\
        #!/bin/bash
        head -c 30000 /dev/zero | tr '\\0' a
        head -c 10000 /dev/zero | tr '\\0' b >&2
        """)
    command_id, run = run_script(aws, sandbox, "sandbox-loud", script)
    assert run.status == "Success"
    assert run.stdout == "a" * 23_980 + "--output truncated--"
    assert run.stderr == "b" * 8_000
    _, exact = run_script(aws, sandbox, "sandbox-exact", "#!/bin/bash\nhead -c 24000 /dev/zero | tr '\\0' c")
    assert exact.stdout == "c" * 23_980 + "--output truncated--"  # Go: len(input) < max, else cut
    listed = aws.ssm.list_command_invocations(CommandId=command_id, Details=True)["CommandInvocations"]
    size = (2_500 - len("\n----------ERROR-------\n") - 2 * len("\n---Output truncated---")) // 2
    assert listed[0]["CommandPlugins"][0]["Output"] == (
        "a" * size
        + "\n---Output truncated---"
        + "\n----------ERROR-------\n"
        + "b" * size
        + "\n---Error truncated----"
    )


def test_a_document_past_64_kb_with_its_parameters_is_refused(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # SSM's document quota (MaxDocumentSizeExceeded) holds for what the instance receives.
    content = {
        "schemaVersion": "2.2",
        "description": "size test",
        "parameters": {"Blob": {"type": "String", "description": "text", "allowedPattern": "^x*$"}},
        "mainSteps": [
            {"action": "aws:runShellScript", "name": "step1", "inputs": {"runCommand": ["echo '{{ Blob }}'"]}}
        ],
    }
    with contextlib.suppress(ClientError):
        aws.ssm.delete_document(Name="sandbox-size")
    aws.ssm.create_document(
        Content=yaml.safe_dump(content), Name="sandbox-size", DocumentType="Command", DocumentFormat="YAML"
    )
    sandbox = make_sandbox()
    assert wait_invocation(
        aws.ssm, sandbox, send_document(aws.ssm, sandbox, "sandbox-size", Blob="x" * 60_000)
    )
    with pytest.raises(ClientError) as error:
        send_document(aws.ssm, sandbox, "sandbox-size", Blob="x" * 66_000)
    assert error.value.response["Error"]["Code"] == "MaxDocumentSizeExceeded"


def test_every_project_document_with_its_longest_parameters_fits_the_quota() -> None:
    # Each document alone is under half the quota (the largest is ~19 KB): the other half is
    # room for its parameters' values, which the Lambdas keep to paths, names and URLs.
    from local.sandbox.agent import MAX_DOCUMENT_BYTES
    from local.sandbox.documents import document_content, document_names

    for name in document_names():
        size = len(json.dumps(document_content(name)).encode())
        assert size * 2 < MAX_DOCUMENT_BYTES, (name, size)
