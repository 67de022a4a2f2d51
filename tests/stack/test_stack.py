"""The synthesized stack: cdk-nag, cfn-lint, statelint, and what the template promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from asoba_deploy.core.steps import STEPS, Grant, Phase, phase
from local.stack import PROJECT_ROOT, Synthesized, nested_machines, synthesize
from stacks.command_events import COMPLETER_HANDLER

BIN = Path(sys.executable).parent


def resources(synth: Synthesized, kind: str) -> dict[str, Any]:
    return {k: v for k, v in synth.template["Resources"].items() if v["Type"] == kind}


def test_cdk_nag_has_no_unacknowledged_findings(synth: Synthesized) -> None:
    report = (
        json.loads((synth.outdir / "validation-report.json").read_text())
        if (synth.outdir / "validation-report.json").exists()
        else {"pluginReports": []}
    )
    violations = [v for r in report["pluginReports"] for v in r.get("violations", [])]
    assert violations == []


def test_every_acknowledgement_gives_a_reason() -> None:
    sources = "\n".join(p.read_text() for p in (PROJECT_ROOT / "stacks").glob("*.py"))
    acknowledgements = sources.count("Acknowledgment(")
    assert acknowledgements > 0
    assert sources.count("reason=") >= acknowledgements


def test_cfn_lint_passes(synth: Synthesized) -> None:
    template = synth.outdir / "AsobaModelDeploy.template.json"
    run = subprocess.run(
        [str(BIN / "cfn-lint"), "--ignore-checks", "W3005", "--", str(template)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_statelint_passes_on_the_extracted_definition(synth: Synthesized, tmp_path: Path) -> None:
    definition = tmp_path / "definition.json"
    definition.write_text(json.dumps(synth.state_machine_definition))
    run = subprocess.run(
        [str(BIN / "statelint"), "--ignore=FLOAT", str(definition)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_definition_has_a_state_for_every_registry_step(synth: Synthesized) -> None:
    names = set(_all_named_states(synth.state_machine_definition))
    for step in STEPS.values():
        if step.has_function and (step.instance is not None or step.phase in (Phase.INPUT, Phase.PLAN)):
            assert step.label in names, step.name
    assert {"AcquireLock", "ReleaseLock", "RecordDeployment", "RecordFailure", "DryRun?", "Fits?"} <= names
    assert "StopFlux?" in names  # the step's run_if
    # no Lambda waits: waiting is Wait states, each as long as the poll Lambda's back-off says
    # (the configured interval is its floor, in the functions' settings)
    waits = [s for s in _all_states(synth.state_machine_definition) if s.get("Type") == "Wait"]
    # (the wake-up of a stopped instance waits as long as its function says: stacks/wake_instance.py)
    assert waits and all(w["SecondsPath"] in ("$.command.wait_seconds", "$.wake.wait_seconds") for w in waits)


def _all_named_states(definition: dict[str, Any]) -> list[str]:
    found = []
    for name, state in definition["States"].items():
        found.append(name)
        for branch in nested_machines(state):
            found.extend(_all_named_states(branch))
    return found


def _all_states(definition: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for state in definition["States"].values():
        found.append(state)
        for branch in nested_machines(state):
            found.extend(_all_states(branch))
    return found


def test_rollback_catches_every_change_step(synth: Synthesized) -> None:
    # Deploy sits in the Rollout Map's per-instance deployment (stacks/rollout.py)
    definition = synth.state_machine_definition
    states = {name: s for named in _all_states_named(definition) for name, s in named.items()}
    deploy = states["Deploy"]
    change = next(s for b in deploy["Branches"] for n, s in b["States"].items() if n == "ChangeInstance")
    catch = change["Catch"][0]
    assert catch["ErrorEquals"] == ["States.ALL"]
    assert catch["Next"] == "RollbackInstance"
    # every change step is inside it, those of a parallel group in the branches of its Parallel
    change_states = set(_all_named_states({"States": {"ChangeInstance": change}}))
    assert {step.label for step in phase(Phase.CHANGE)} <= change_states
    assert "Prepare" in change_states


def test_the_runtime_is_installed_started_and_awaited_beside_the_sync(synth: Synthesized) -> None:
    # Given the change phase as synthesized
    states: dict[str, dict[str, Any]] = {}
    for named in _all_states_named(synth.state_machine_definition):
        states.update(named)
    prepare = states["Prepare"]
    # Then Prepare is one Parallel state with the registry group's two branches: the sync, and
    # install -> evict (when the plan evicts) -> start-service -> health-check, each step's whole
    # fragment (send first, result last)
    group = [step for step in phase(Phase.CHANGE) if step.parallel == "prepare"]
    assert [step.name for step in group] == ["sync", "install", "evict", "start-service", "health-check"]
    lanes = [["sync"], ["install", "evict", "start-service", "health-check"]]
    assert prepare["Type"] == "Parallel"
    assert [branch["StartAt"] for branch in prepare["Branches"]] == ["Sync", "Install"]
    for lane, branch in zip(lanes, prepare["Branches"], strict=True):
        steps = [STEPS[name] for name in lane]
        for step, after in zip(steps, [*steps[1:], None], strict=True):
            result = branch["States"][f"{step.label}.Result"]
            assert result["ResultPath"] == step.result_path
            if after is None:
                assert result.get("End") is True
            elif after.run_if is None:
                assert result["Next"] == after.label
            else:
                # behind "<Label>?": run when its path is there, else a result that says skipped
                guard = branch["States"][result["Next"]]
                assert (result["Next"], guard["Type"]) == (f"{after.label}?", "Choice")
                assert guard["Choices"] == [
                    {"Variable": after.run_if, "IsPresent": True, "Next": after.label}
                ]
                skipped = branch["States"][guard["Default"]]
                assert (skipped["Result"], skipped["ResultPath"]) == ({"skipped": True}, after.result_path)
                assert skipped["Next"] == branch["States"][f"{after.label}.Result"]["Next"]
    # every result lands at $.steps.<key>, as if they had run in turn, and the scratch copy is
    # emptied again
    assert prepare["ResultSelector"] == {
        "sync.$": "$[0].steps.sync",
        "install.$": "$[1].steps.install",
        "evict.$": "$[1].steps.evict",
        "start_service.$": "$[1].steps.start_service",
        "health_check.$": "$[1].steps.health_check",
    }
    copy = states[prepare["Next"]]
    for step in group:
        assert (copy["Type"], copy["InputPath"], copy["ResultPath"]) == (
            "Pass",
            f"$.prepare.{step.key}",
            step.result_path,
        )
        copy = states[copy["Next"]]
    done = copy
    assert (done["Result"], done["ResultPath"]) == ({}, "$.prepare")
    # install no longer starts the unit: only start-service's document does
    for name in ("install", "start-service"):
        script = "\n".join(
            "\n".join(step["inputs"].get("runCommand", []))
            for step in yaml.safe_load((PROJECT_ROOT / "ssm_documents" / f"{name}.yaml").read_text())[
                "mainSteps"
            ]
        )
        assert ("systemctl restart" in script) == (name == "start-service"), name


def _all_states_named(definition: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    found = [dict(definition["States"])]
    for state in definition["States"].values():
        for branch in nested_machines(state):
            found.extend(_all_states_named(branch))
    return found


def test_documents_are_registered_from_the_files(synth: Synthesized) -> None:
    documents = resources(synth, "AWS::SSM::Document")
    files = sorted(p.stem for p in (PROJECT_ROOT / "ssm_documents").glob("*.yaml"))
    names = sorted(d["Properties"]["Name"].removeprefix("AsobaModelDeploy-") for d in documents.values())
    assert names == files
    for document in documents.values():
        properties = document["Properties"]
        assert properties["DocumentType"] == "Command"
        content = properties["Content"]
        stem = properties["Name"].removeprefix("AsobaModelDeploy-")
        source = yaml.safe_load((PROJECT_ROOT / "ssm_documents" / f"{stem}.yaml").read_text())
        assert content == source
        for name, parameter in content.get("parameters", {}).items():
            assert "allowedPattern" in parameter or "allowedValues" in parameter, name


def test_send_command_is_scoped_to_instances_and_documents(synth: Synthesized) -> None:
    for policy in resources(synth, "AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if "ssm:SendCommand" in actions:
                text = json.dumps(statement["Resource"])
                assert "*" not in text.replace(":*", "")
                assert "i-0123456789abcdef0" in text
                assert ":document/AsobaModelDeploy-" in text


def test_schedule_runs_validate_mode_and_alarm_notifies(synth: Synthesized) -> None:
    rules = {
        k: r
        for k, r in resources(synth, "AWS::Events::Rule").items()
        if "ScheduleExpression" in r["Properties"]
    }
    assert len(rules) == 1
    rule = next(iter(rules.values()))["Properties"]
    assert rule["ScheduleExpression"] == "rate(1 hour)"
    assert json.loads(rule["Targets"][0]["Input"]) == {
        "mode": "validate",
        "instance_id": "i-0123456789abcdef0",
    }
    alarm = next(iter(resources(synth, "AWS::CloudWatch::Alarm").values()))["Properties"]
    # ValidationPassed, or InstanceStopped for an instance the idle policy stopped
    watched = {m["MetricStat"]["Metric"]["MetricName"] for m in alarm["Metrics"] if "MetricStat" in m}
    assert watched == {"ValidationPassed", "InstanceStopped"}
    assert alarm["TreatMissingData"] == "breaching"
    assert alarm["AlarmActions"]


def test_state_machine_logs_all_and_traces(synth: Synthesized) -> None:
    machine = next(iter(resources(synth, "AWS::StepFunctions::StateMachine").values()))["Properties"]
    assert machine["LoggingConfiguration"]["Level"] == "ALL"
    assert machine["TracingConfiguration"]["Enabled"] is True


def test_functions_are_the_registrys_and_share_one_code_asset(synth: Synthesized) -> None:
    functions = resources(synth, "AWS::Lambda::Function")
    keys = {json.dumps(f["Properties"]["Code"]) for f in functions.values()}
    handlers = sorted(f["Properties"]["Handler"] for f in functions.values())
    # one per registry step, and the status-change event completer (stacks/command_events.py)
    expected = [step.handler for step in STEPS.values() if step.has_function] + [COMPLETER_HANDLER]
    assert handlers == sorted(expected)
    assert len(keys) == 1
    assert all(f["Properties"]["TracingConfig"]["Mode"] == "Active" for f in functions.values())


def test_the_code_asset_holds_handlers_and_core_only(synth: Synthesized) -> None:
    functions = resources(synth, "AWS::Lambda::Function")
    key = next(iter(functions.values()))["Properties"]["Code"]["S3Key"]
    asset = synth.outdir / synth.assets["files"][key.removesuffix(".zip")]["source"]["path"]
    files = sorted(str(p.relative_to(asset)) for p in asset.rglob("*.py"))
    tops = {f.split("/")[0] for f in files}
    assert tops == {"handlers", "asoba_deploy"}
    assert not any(f.startswith("asoba_deploy/cli") for f in files)
    for step in STEPS.values():
        if step.has_function:
            assert f"handlers/{step.key}.py" in files, step.name


@pytest.mark.parametrize(
    ("context", "named"),
    [
        ({"instance_ids": "not-an-instance"}, "instance_ids"),
        ({"model_bucket": "Bad_Bucket"}, "model_bucket"),
        ({"thresholds": '{"coexist_port": 80}'}, "thresholds.coexist_port"),
        ({"poll_interval_seconds": "0"}, "poll_interval_seconds"),
        ({"model_bucket_kms_key_arn": "alias/models"}, "model_bucket_kms_key_arn"),
        (
            {"model_bucket_kms_key_arn": "arn:aws:kms:us-west-2:123456789012:alias/models"},
            "model_bucket_kms_key_arn",
        ),
    ],
)
def test_app_refuses_bad_context_naming_the_key(context: dict[str, str], named: str) -> None:
    args = [sys.executable, "app.py"]
    merged = {**json.loads((PROJECT_ROOT / "cdk.json").read_text())["context"], **context}
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(merged), "CDK_OUTDIR": "/tmp/never-written"}
    run = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 2
    assert f"context key '{named}" in run.stderr
    assert "Traceback" not in run.stderr


def test_cdk_nag_runs_on_every_synth(tmp_path: Path) -> None:
    import aws_cdk as cdk
    from aws_cdk import aws_iam as iam

    from app import build_app
    from local.stack import default_context

    app, stack = build_app(cdk.App(outdir=str(tmp_path), context=default_context()))
    role = iam.Role(stack, "Careless", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    role.add_to_policy(iam.PolicyStatement(actions=["s3:*"], resources=["*"]))
    with pytest.raises(Exception, match=r"AwsSolutions-IAM5\[Action::s3:\*\]"):
        app.synth()


def test_several_instances_each_get_send_rights_a_schedule_and_an_alarm(tmp_path: Path) -> None:
    ids = ["i-0123456789abcdef0", "i-0fedcba9876543210"]
    synth = synthesize(tmp_path / "cdk.out", {"instance_ids": ids})
    sends = [
        json.dumps(s["Resource"])
        for p in resources(synth, "AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if "ssm:SendCommand" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    ]
    assert sends and all(all(i in text for i in ids) for text in sends)
    inputs = [
        json.loads(r["Properties"]["Targets"][0]["Input"])
        for r in resources(synth, "AWS::Events::Rule").values()
        if "ScheduleExpression" in r["Properties"]
    ]
    assert sorted(i["instance_id"] for i in inputs) == ids
    assert len(resources(synth, "AWS::CloudWatch::Alarm")) == 2


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return actions if isinstance(actions, list) else [actions]


def _instance_policy(synth: Synthesized) -> list[dict[str, Any]]:
    (policy,) = resources(synth, "AWS::IAM::ManagedPolicy").values()
    return list(policy["Properties"]["PolicyDocument"]["Statement"])


def _role_statements(synth: Synthesized) -> dict[str, list[dict[str, Any]]]:
    """Handler -> the statements of its role's policies."""
    by_role: dict[str, list[dict[str, Any]]] = {}
    for policy in resources(synth, "AWS::IAM::Policy").values():
        for role in policy["Properties"]["Roles"]:
            by_role.setdefault(role["Ref"], []).extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return {
        f["Properties"]["Handler"]: by_role.get(f["Properties"]["Role"]["Fn::GetAtt"][0], [])
        for f in resources(synth, "AWS::Lambda::Function").values()
    }


def test_instance_policy_lets_the_ssm_agent_create_and_find_the_output_group(synth: Synthesized) -> None:
    # The real agent calls CreateLogGroup, then DescribeLogGroups, and stops streaming on a denial
    statements = _instance_policy(synth)
    (output_group,) = [k for k in resources(synth, "AWS::Logs::LogGroup") if k.startswith("CommandOutput")]
    create = next(s for s in statements if "logs:CreateLogGroup" in _actions(s))
    assert _actions(create) == ["logs:CreateLogGroup"]
    text = json.dumps(create["Resource"])
    assert output_group in text and "log-group:*" not in text  # that group only
    describe = next(s for s in statements if "logs:DescribeLogGroups" in _actions(s))
    assert _actions(describe) == ["logs:DescribeLogGroups"]
    resource = json.dumps(describe["Resource"])
    assert ':logs:us-west-2:", {"Ref": "AWS::AccountId"}, ":log-group:*"' in resource  # not "*"


def test_state_machine_log_group_is_a_vended_logs_group(synth: Synthesized) -> None:
    machine = next(iter(resources(synth, "AWS::StepFunctions::StateMachine").values()))["Properties"]
    (destination,) = machine["LoggingConfiguration"]["Destinations"]
    group_id = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    group = synth.template["Resources"][group_id]["Properties"]
    assert group["LogGroupName"] == "/aws/vendedlogs/states/AsobaModelDeploy-deploy"


MODEL_KEY = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
READS_MODELS = sorted(s.handler for s in STEPS.values() if s.has_function and Grant.READ_MODELS in s.grants)


def test_without_a_model_bucket_key_nothing_gets_kms_decrypt(synth: Synthesized) -> None:
    everything = [s for statements in _role_statements(synth).values() for s in statements]
    everything += _instance_policy(synth)
    assert not [s for s in everything if "kms:Decrypt" in _actions(s)]


def test_a_model_bucket_key_is_decryptable_by_every_model_reader(tmp_path: Path) -> None:
    synth = synthesize(tmp_path / "cdk.out", {"model_bucket_kms_key_arn": MODEL_KEY})
    assert READS_MODELS == [
        "handlers.check_instance.handler",
        "handlers.plan.handler",
        "handlers.validate_input.handler",
    ]
    for handler, statements in _role_statements(synth).items():
        decrypts = [s for s in statements if "kms:Decrypt" in _actions(s)]
        if handler in READS_MODELS:
            assert [s["Resource"] for s in decrypts] == [MODEL_KEY], handler
            assert decrypts[0]["Condition"] == {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}}
        else:
            assert decrypts == [], handler
    decrypts = [s for s in _instance_policy(synth) if "kms:Decrypt" in _actions(s)]
    assert [(_actions(s), s["Resource"]) for s in decrypts] == [(["kms:Decrypt"], MODEL_KEY)]
