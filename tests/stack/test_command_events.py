"""The synthesized event-driven steps: the rule and its pattern, the completer, the token table,
the fragment every instance step is built from, and who may complete a task token."""

from __future__ import annotations

import json
from typing import Any

from asoba_deploy.core.completion import DETAIL_TYPE, TERMINAL_STATUSES
from asoba_deploy.core.steps import STEPS
from local.stack import Synthesized, nested_machines
from stacks.command_events import COMPLETER_HANDLER

INSTANCE_STEPS = [s for s in STEPS.values() if s.has_function and s.instance is not None]


def resources(synth: Synthesized, kind: str) -> dict[str, Any]:
    return {k: v for k, v in synth.template["Resources"].items() if v["Type"] == kind}


def _completer(synth: Synthesized) -> tuple[str, dict[str, Any]]:
    ((logical_id, function),) = [
        (k, f)
        for k, f in resources(synth, "AWS::Lambda::Function").items()
        if f["Properties"]["Handler"] == COMPLETER_HANDLER
    ]
    return logical_id, function


def _states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = dict(definition["States"])
    for state in definition["States"].values():
        for branch in nested_machines(state):
            found.update(_states(branch))
    return found


def _statements_of(synth: Synthesized, role_logical_id: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in resources(synth, "AWS::IAM::Policy").values()
        if {"Ref": role_logical_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return actions if isinstance(actions, list) else [actions]


def test_the_rule_routes_terminal_statuses_of_the_stacks_documents_on_its_instances(
    synth: Synthesized,
) -> None:
    ((_, rule),) = [
        (k, r) for k, r in resources(synth, "AWS::Events::Rule").items() if "EventPattern" in r["Properties"]
    ]
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.ssm"]
    assert pattern["detail-type"] == [DETAIL_TYPE]
    detail = pattern["detail"]
    assert sorted(detail["status"]) == sorted(TERMINAL_STATUSES)
    assert "InProgress" not in detail["status"] and "Pending" not in detail["status"]
    assert detail["instance-id"] == ["i-0123456789abcdef0"]
    documents = {d["Properties"]["Name"] for d in resources(synth, "AWS::SSM::Document").values()}
    assert set(detail["document-name"]) <= documents
    assert {f"AsobaModelDeploy-{s.document}" for s in INSTANCE_STEPS} == set(detail["document-name"])
    # its one target is the completer, which EventBridge may invoke for this rule only
    completer_id, _ = _completer(synth)
    ((target),) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [completer_id, "Arn"]}
    ((permission),) = resources(synth, "AWS::Lambda::Permission").values()
    properties = permission["Properties"]
    assert properties["Principal"] == "events.amazonaws.com"
    assert properties["Action"] == "lambda:InvokeFunction"
    assert properties["FunctionName"] == {"Fn::GetAtt": [completer_id, "Arn"]}
    ((rule_id),) = [
        k for k, r in resources(synth, "AWS::Events::Rule").items() if "EventPattern" in r["Properties"]
    ]
    assert properties["SourceArn"] == {"Fn::GetAtt": [rule_id, "Arn"]}


def test_the_token_table_is_keyed_by_invocation_and_expires(synth: Synthesized) -> None:
    tables = resources(synth, "AWS::DynamoDB::Table")
    ((_, table),) = [(k, t) for k, t in tables.items() if k.startswith("TablesStepTokens")]
    properties = table["Properties"]
    assert properties["KeySchema"] == [{"AttributeName": "invocation", "KeyType": "HASH"}]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert properties["BillingMode"] == "PAY_PER_REQUEST"


def test_every_instance_step_awaits_its_command_with_a_token_and_a_safety_net(synth: Synthesized) -> None:
    states = _states(synth.state_machine_definition)
    for step in INSTANCE_STEPS:
        label = step.label
        send, wait = states[label], states[f"{label}.Await"]
        assert send["Parameters"]["action"] == "send" and send["Next"] == f"{label}.Await"
        # the Await is a callback task on the step's own function: the token, the command, a timeout
        assert wait["Resource"].endswith(":states:::lambda:invoke.waitForTaskToken")
        assert wait["Parameters"]["FunctionName"] == send["Resource"]
        payload = wait["Parameters"]["Payload"]
        assert payload == {"action": "await", "command.$": "$.command", "token.$": "$$.Task.Token"}
        assert wait["TimeoutSecondsPath"] == "$.command.await_seconds"
        assert wait["ResultPath"] == "$.command"
        assert wait["Next"] == f"{label}.Finished?"
        # a round without an event times out and enters the Await again, $.command untouched
        (catch,) = wait["Catch"]
        assert catch == {"ErrorEquals": ["States.Timeout"], "ResultPath": None, "Next": f"{label}.Rearm"}
        assert states[f"{label}.Rearm"] == {"Type": "Pass", "Next": f"{label}.Await"}
        # transient errors of the await Lambda are retried, as the send's
        assert wait["Retry"] == send["Retry"]
        finished = states[f"{label}.Finished?"]
        assert finished["Choices"] == [
            {"Variable": "$.command.status", "StringEquals": "Resend", "Next": f"{label}.Again"}
        ]
        assert finished["Default"] == f"{label}.Result"
        assert states[f"{label}.Again"]["Next"] == label
        # nothing polls on an interval any more
        assert f"{label}.Poll" not in states and f"{label}.Wait" not in states


def test_only_the_step_functions_and_the_completer_may_complete_tokens(synth: Synthesized) -> None:
    _, completer = _completer(synth)
    completer_role = completer["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = _statements_of(synth, completer_role)
    actions = sorted(a for s in statements for a in _actions(s))
    assert actions == sorted(
        [
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "ssm:GetCommandInvocation",
            "states:SendTaskFailure",
            "states:SendTaskSuccess",
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "xray:PutTelemetryRecords",
            "xray:PutTraceSegments",
        ]
    )
    table = next(s for s in statements if "dynamodb:GetItem" in _actions(s))
    assert "TablesStepTokens" in json.dumps(table["Resource"])
    # no SendCommand, no other table: it reads and completes, nothing else
    assert not any(a.startswith("ssm:Send") for a in actions)
    senders = {
        f["Properties"]["Role"]["Fn::GetAtt"][0]
        for f in resources(synth, "AWS::Lambda::Function").values()
        if any(
            "states:SendTaskSuccess" in _actions(s)
            for s in _statements_of(synth, f["Properties"]["Role"]["Fn::GetAtt"][0])
        )
    }
    handlers = {
        f["Properties"]["Handler"]
        for f in resources(synth, "AWS::Lambda::Function").values()
        if f["Properties"]["Role"]["Fn::GetAtt"][0] in senders
    }
    assert handlers == {COMPLETER_HANDLER, *(s.handler for s in INSTANCE_STEPS)}
