"""What the document tests of resident models share: a resident unit's roots and its install."""

from __future__ import annotations

from typing import TypedDict

from local.sandbox import Sandbox
from tests.documents.steps_support import install
from tests.fixtures import Aws


class ResidentRoots(TypedDict):
    ServiceUnit: str
    EnvDir: str
    StateDir: str


def resident_roots(sandbox: Sandbox, model: str) -> ResidentRoots:
    """The parameters the Lambdas pass for a resident model (core.residents.unit_roots)."""
    return {
        "ServiceUnit": f"asoba-inference@{model}.service",
        "EnvDir": str(sandbox.env_dir / "models" / model),
        "StateDir": str(sandbox.state_dir / "models" / model),
    }


def install_resident(
    aws: Aws, sandbox: Sandbox, bundle: str, model: str, port: int, *, adapters: str = ""
) -> dict[str, object]:
    """install, then start-service, of `model` as a resident unit; the install's result."""
    roots = resident_roots(sandbox, model)
    return install(
        aws,
        sandbox,
        bundle,
        model,
        port,
        ServiceUnit=roots["ServiceUnit"],
        EnvDir=roots["EnvDir"],
        Adapters=adapters,
    )
