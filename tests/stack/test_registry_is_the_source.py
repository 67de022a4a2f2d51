"""The step registry is the single source: a step added to it (with its document and handler
file) reaches the stack's functions, documents and IAM and the state machine, with no other edit."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from asoba_deploy.core import errors
from asoba_deploy.core.steps import STEPS, Phase, Step
from local.stack import PROJECT_ROOT, Synthesized, nested_machines, synthesize
from stacks import paths


class WarmCacheFailed(errors.CommandFailed):
    """The made-up step's error, named as the registry requires."""


@pytest.fixture
def registry_with_a_new_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Step]:
    # Given a new change step after install, in its branch of the parallel group (before
    # evict and start-service), its document and its handler
    template = STEPS["install"]
    assert template.instance is not None
    step = replace(
        template,
        name="warm-cache",
        description="Read the weights once into the page cache",
        error=WarmCacheFailed,
        # install's group and branch, kept by replace(): a step of the runtime's branch
    )
    documents = tmp_path / "ssm_documents"
    shutil.copytree(PROJECT_ROOT / "ssm_documents", documents)
    shutil.copyfile(documents / "install.yaml", documents / "warm-cache.yaml")
    handlers = tmp_path / "handlers"
    shutil.copytree(PROJECT_ROOT / "lambdas" / "handlers", handlers)
    (handlers / "warm_cache.py").write_text(
        (handlers / "install.py").read_text().replace('"install"', '"warm-cache"')
    )
    monkeypatch.setattr(paths, "DOCUMENTS_DIR", documents)
    monkeypatch.setattr(paths, "HANDLERS_DIR", handlers)
    saved = dict(STEPS)
    reordered: dict[str, Step] = {}
    for name, existing in saved.items():
        reordered[name] = existing
        if name == "install":
            reordered[step.name] = step
    STEPS.clear()
    STEPS.update(reordered)
    try:
        yield step
    finally:
        STEPS.clear()
        STEPS.update(saved)


def _states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, state in definition["States"].items():
        found[name] = state
        for branch in nested_machines(state):
            found.update(_states(branch))
    return found


def test_a_registered_step_reaches_stack_and_machine(registry_with_a_new_step: Step, tmp_path: Path) -> None:
    step = registry_with_a_new_step

    # When the stack is synthesized
    synth: Synthesized = synthesize(tmp_path / "cdk.out")

    # Then the machine runs it in its phase, between the steps around it in the registry
    assert step.phase is Phase.CHANGE
    states = _states(synth.state_machine_definition)
    assert (step.parallel, step.branch) == ("prepare", "runtime")
    assert states["Install.Result"]["Next"] == "WarmCache"
    assert states["WarmCache.Result"]["Next"] == "Evict?"  # the next step, behind its run_if
    assert states["Prepare"]["ResultSelector"]["warm_cache.$"] == "$[1].steps.warm_cache"
    # its function runs its handler, its document is registered, and it may send only that document
    resources = synth.template["Resources"].values()
    handlers = {r["Properties"]["Handler"] for r in resources if r["Type"] == "AWS::Lambda::Function"}
    assert step.handler in handlers
    documents = {r["Properties"]["Name"] for r in resources if r["Type"] == "AWS::SSM::Document"}
    assert "AsobaModelDeploy-warm-cache" in documents
    sends = [
        json.dumps(s["Resource"])
        for r in resources
        if r["Type"] == "AWS::IAM::Policy"
        for s in r["Properties"]["PolicyDocument"]["Statement"]
        if s["Action"] == "ssm:SendCommand"
    ]
    assert sum("document/AsobaModelDeploy-warm-cache" in text for text in sends) == 1
