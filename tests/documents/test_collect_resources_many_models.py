"""collect-resources with hundreds of cached models: its result line stays under the 24,000
characters GetCommandInvocation keeps, listing the newest copies and counting them all."""

from __future__ import annotations

import os
from collections.abc import Callable

from asoba_deploy.core.snapshot import InstanceSnapshot
from local.sandbox import Sandbox, run_document
from tests.fixtures import Aws

MODELS = 400


def test_hundreds_of_cached_models_fit_the_result_line(
    aws: Aws, make_sandbox: Callable[..., Sandbox]
) -> None:
    # Given 400 cached model folders with long names, the last one synced most recently
    sandbox = make_sandbox(gpu=False)
    for i in range(MODELS):
        folder = sandbox.models_root / f"organisation-name-model-family-{i:04d}-instruct-awq"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        os.utime(folder, (1_700_000_000 + i, 1_700_000_000 + i))

    # When collect-resources runs (before: ~30,000 characters, cut by the agent, the plan failed)
    run = run_document(aws.ssm, sandbox, "collect-resources")

    # Then the line is whole and parses; it lists the newest 50 and counts all 400
    assert run.status == "Success", run.explain()
    assert len(run.stdout) < 24_000
    snapshot = InstanceSnapshot.model_validate_json(run.stdout.strip())
    assert snapshot.cached_models_total == MODELS and snapshot.cached_total_bytes == 2 * MODELS
    assert len(snapshot.cached_models) == 50
    assert snapshot.cached_models[0].name == f"organisation-name-model-family-{MODELS - 1:04d}-instruct-awq"
    assert snapshot.cached(f"organisation-name-model-family-{MODELS - 50:04d}-instruct-awq") is not None
