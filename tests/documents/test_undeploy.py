"""undeploy: removes only what an install marked; harmless on a clean instance."""

from __future__ import annotations

from collections.abc import Callable

from local.sandbox import Sandbox, run_document
from tests.documents.steps_support import ok
from tests.fixtures import Aws


def test_undeploy_deletes_only_marked_folders(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    # Given a runtime root that the install never wrote (no marker), e.g. a mistyped parameter
    sandbox = make_sandbox()
    precious = sandbox.root / "opt" / "precious"
    precious.mkdir(parents=True)
    (precious / "data").write_text("keep me")

    run = run_document(aws.ssm, sandbox, "undeploy", RuntimeRoot=str(precious))

    assert run.status == "Failed"
    assert run.result is not None and "no .asoba-runtime marker" in str(run.result["error"])
    assert (precious / "data").read_text() == "keep me"


def test_undeploy_on_a_clean_instance_is_harmless(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    before = sandbox.tree_digest()
    result = ok(run_document(aws.ssm, sandbox, "undeploy"))
    assert (result["stopped"], result["removed"], result["flux_started"]) == (False, [], False)
    assert sandbox.tree_digest() == before
