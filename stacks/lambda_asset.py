"""The Lambda code asset: the handlers and the logic they import, and nothing else.

Composed from an include list, so nothing (the CLI, packaging metadata, caches) has to be
kept out: lambdas/handlers/*.py as the top-level `handlers` package, and the package's
`asoba_deploy/core`. Staged under build/ at synth; CDK hashes the staged bytes, so the
asset changes only when the code does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stacks.paths import BUILD_DIR, PACKAGE_DIR, PROJECT_ROOT

HANDLERS_DIR = PROJECT_ROOT / "lambdas" / "handlers"
# (source, where it lands in the asset)
INCLUDED = (
    (HANDLERS_DIR, Path("handlers")),
    (PACKAGE_DIR / "core", Path("asoba_deploy") / "core"),
)


def _python_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.py") if path.is_file())


def stage_lambda_asset(target: Path = BUILD_DIR / "lambda-asset") -> Path:
    """Lay out the asset in `target` (replacing what was there) and return it."""
    if target.exists():
        shutil.rmtree(target)
    (target / "asoba_deploy").mkdir(parents=True)
    shutil.copyfile(PACKAGE_DIR / "__init__.py", target / "asoba_deploy" / "__init__.py")
    for source, destination in INCLUDED:
        (target / destination).mkdir(parents=True, exist_ok=True)
        for path in _python_files(source):
            shutil.copyfile(path, target / destination / path.name)
    return target
