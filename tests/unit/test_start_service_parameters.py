"""start-service's parameters from the state: wait for this execution's sync marker unless the
plan streams the weights; the marker's token is the execution's name, or a digest of a name the
documents' pattern would refuse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from asoba_deploy.core.errors import CommandFailed
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.steps import (
    START_MARGIN_SECONDS,
    STEPS,
    start_service_parameters,
    sync_marker_token,
    sync_parameters,
)
from tests.unit.test_steps import CONFIG, qwen_plan, state_with  # noqa: F401  (qwen_plan: the fixture)

DOCUMENTS = Path(__file__).resolve().parents[2] / "ssm_documents"


def pattern(document: str, parameter: str) -> str:
    return str(
        yaml.safe_load((DOCUMENTS / f"{document}.yaml").read_text())["parameters"][parameter][
            "allowedPattern"
        ]
    )


def test_a_disk_load_waits_for_the_marker_of_this_execution(qwen_plan: Plan) -> None:  # noqa: F811
    state = state_with(qwen_plan.model_copy(update={"load_from": "disk"}))
    sent = start_service_parameters(CONFIG, state)
    assert sent == {
        "ServiceUnit": "asoba-inference.service",
        "ModelPath": qwen_plan.model_path,
        "WaitForSync": "true",
        "ExecutionName": state.execution_name,
        # it runs beside the sync: it may wait as long as the sync may run, then restart
        "WaitSeconds": str(
            CONFIG.step_budgets.sync + CONFIG.step_budgets.start_service - START_MARGIN_SECONDS
        ),
    }
    assert STEPS["start-service"].instance is not None
    assert STEPS["start-service"].instance.budget(CONFIG, state) == (
        CONFIG.step_budgets.sync + CONFIG.step_budgets.start_service
    )
    # the sync writes the same token into the marker
    assert sync_parameters(CONFIG, state)["ExecutionName"] == sent["ExecutionName"]


def test_a_streamed_load_starts_at_once(qwen_plan: Plan) -> None:  # noqa: F811
    state = state_with(qwen_plan.model_copy(update={"load_from": "stream"}))
    sent = start_service_parameters(CONFIG, state)
    assert sent["WaitForSync"] == "false"
    # no wait for the sync: the restart's budget only
    assert sent["WaitSeconds"] == str(CONFIG.step_budgets.start_service - START_MARGIN_SECONDS)


def test_waiting_without_an_execution_name_is_refused(qwen_plan: Plan) -> None:  # noqa: F811
    state = state_with(qwen_plan.model_copy(update={"load_from": "disk"})).model_copy(
        update={"execution_name": None}
    )
    with pytest.raises(CommandFailed, match="execution's name"):
        start_service_parameters(CONFIG, state)


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("deploy-tiny-llama-20261202T030934-5a58", True),
        ("run_8170d9cdb3d1", True),
        ("demo.1764640000+retry=2@eu", True),
        ("deploy with spaces", False),
        ("déploiement-été", False),  # Step Functions takes non-ASCII names, the documents do not
        ("a'; rm -rf /; '", False),
        ("x" * 81, False),
    ],
)
def test_the_marker_token_is_the_name_when_the_documents_take_it(
    qwen_plan: Plan,  # noqa: F811
    name: str,
    kept: bool,
) -> None:
    state = state_with(qwen_plan).model_copy(update={"execution_name": name})
    token = sync_marker_token(state)
    assert (token == name) is kept
    # whatever the name, both documents accept the token, and distinct names stay distinct
    for document in ("sync", "start-service"):
        assert re.fullmatch(pattern(document, "ExecutionName"), token), (document, token)
    other = sync_marker_token(state.model_copy(update={"execution_name": name + "-2"}))
    assert other != token
