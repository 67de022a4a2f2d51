"""The Lambda code asset and the dependency layer import on the runtime's own Python.

The local cloud runs handlers from the checkout on this venv's Python, so a module missing
from the asset, or a layer wheel built for another Python, would only fail on AWS. Here
every handler is imported from the staged asset plus build/lambda-layer alone (`-S`: no
site-packages) on a pyenv Python of the runtime's version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from asoba_deploy.core.steps import STEPS
from stacks.functions import LAYER_PYTHON_VERSION, RUNTIME
from stacks.lambda_asset import stage_lambda_asset
from stacks.paths import LAMBDA_LAYER_DIR

LAYER = LAMBDA_LAYER_DIR / "python"

_PROBE = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    module, _, attribute = name.rpartition(".")
    found[name] = callable(getattr(importlib.import_module(module), attribute))
import boto3, botocore
print(json.dumps({"version": list(sys.version_info[:2]), "handlers": found,
                  "boto3": [boto3.__version__, boto3.__file__],
                  "botocore": [botocore.__version__, botocore.__file__]}))
"""


def _pyenv_python(version: str) -> Path | None:
    roots = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        run = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if run.returncode == 0 and run.stdout.strip():
            roots.append(Path(run.stdout.strip()))
    roots += [Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))]
    for root in roots:
        for candidate in sorted((root / "versions").glob(f"{version}.*"), reverse=True):
            python = candidate / "bin" / f"python{version}"
            if python.is_file():
                return python
    return None


def test_runtime_and_layer_python_agree() -> None:
    assert RUNTIME.name == f"python{LAYER_PYTHON_VERSION}"


def test_handlers_import_from_the_asset_and_layer_on_the_runtime_python() -> None:
    python = _pyenv_python(LAYER_PYTHON_VERSION)
    if python is None:
        pytest.skip(f"no pyenv Python {LAYER_PYTHON_VERSION} (the Lambda runtime's) on this machine")
    assert LAYER.is_dir(), "build/lambda-layer is missing: run `make lambda-layer`"
    handlers = sorted({step.handler for step in STEPS.values() if step.has_function})
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{stage_lambda_asset()}:{LAYER}"}
    run = subprocess.run(
        [str(python), "-S", "-s", "-c", _PROBE, *handlers],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, f"on {python}:\n{run.stderr[-4000:]}"
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["version"] == [int(part) for part in LAYER_PYTHON_VERSION.split(".")]
    assert found["handlers"] == dict.fromkeys(handlers, True)
    # boto3 and botocore both come from the layer, as a pair boto3 accepts
    (boto3_version, boto3_file), (botocore_version, botocore_file) = found["boto3"], found["botocore"]
    assert Path(boto3_file).is_relative_to(LAYER) and Path(botocore_file).is_relative_to(LAYER)
    metadata = (LAYER / f"boto3-{boto3_version}.dist-info" / "METADATA").read_text()
    wanted = next(
        Requirement(line.removeprefix("Requires-Dist:").strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: botocore") and "extra ==" not in line
    )
    assert wanted.specifier.contains(botocore_version), (wanted, botocore_version)
