"""Stopping and starting instances is granted to exactly the functions that do it (the idle
policy's check, the deployment's wake-up), on the stack's instances only."""

from __future__ import annotations

import json
from typing import Any

from local.stack import Synthesized


def _statements(synth: Synthesized, action: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for policy in synth.template["Resources"].values():
        if policy["Type"] != "AWS::IAM::Policy":
            continue
        roles = json.dumps(policy["Properties"].get("Roles", []))
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if action in actions:
                found.append((roles, statement))
    return found


def test_stop_and_start_are_scoped_to_the_stacks_instances(synth: Synthesized) -> None:
    for action, role in (
        ("ec2:StopInstances", "CheckInstanceRole"),
        ("ec2:StartInstances", "WakeInstanceRole"),
    ):
        granted = _statements(synth, action)
        assert len(granted) == 1, action
        roles, statement = granted[0]
        assert role in roles
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        assert len(resources) == 1 and "instance/i-0123456789abcdef0" in json.dumps(resources[0])
        assert "*" not in json.dumps(resources).replace("instance/i-", "")
