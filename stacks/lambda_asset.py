"""The Lambda code asset: the handlers and the logic they import, and nothing else.

Composed from an include list, so nothing (the CLI, packaging metadata, caches) has to be
kept out: lambdas/handlers/*.py as the top-level `handlers` package, and the package's
`asoba_deploy/core` with its subpackages. Staged under build/ at synth; CDK hashes the staged bytes, so the
asset changes only when the code does.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from stacks import paths


def included() -> list[tuple[Path, Path]]:
    """(source folder, where its *.py land in the asset)."""
    return [
        (paths.HANDLERS_DIR, Path("handlers")),
        (paths.PACKAGE_DIR / "core", Path("asoba_deploy") / "core"),
    ]


def _python_files(folder: Path) -> list[Path]:
    # Recursive: subpackages (asoba_deploy/core/planner) are imported by the handlers too.
    return sorted(path for path in folder.rglob("*.py") if path.is_file() and "__pycache__" not in path.parts)


def _files() -> list[tuple[Path, Path]]:
    """(source file, its path in the asset), sorted."""
    files = [(paths.PACKAGE_DIR / "__init__.py", Path("asoba_deploy") / "__init__.py")]
    for source, destination in included():
        files += [(path, destination / path.relative_to(source)) for path in _python_files(source)]
    return sorted(files, key=lambda pair: str(pair[1]))


def stage_lambda_asset(root: Path | None = None) -> Path:
    """Lay out the asset under `root` in a folder named by its content, and return it.
    Content-addressed, so concurrent synths never see each other's half-written copies."""
    root = root or paths.BUILD_DIR / "lambda-asset"
    files = _files()
    digest = hashlib.sha256()
    for source, relative in files:
        digest.update(str(relative).encode() + b"\0" + source.read_bytes() + b"\0")
    target = root / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    for source, relative in files:
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, staging / relative)
    try:
        staging.rename(target)
    except OSError:  # another synth staged the same content first
        shutil.rmtree(staging, ignore_errors=True)
    return target
