"""One synthesis of the default stack, shared by the stack tests (a synth takes ~15 s)."""

from __future__ import annotations

import pytest

from local.stack import Synthesized, synthesize


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    # cdk-nag runs inside synthesize(): an unacknowledged finding makes it raise
    return synthesize(tmp_path_factory.mktemp("stack") / "cdk.out")
