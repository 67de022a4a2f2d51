"""Where the stack finds the files it packages."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = PROJECT_ROOT / "build"
HANDLERS_DIR = PROJECT_ROOT / "lambdas" / "handlers"
PACKAGE_DIR = PROJECT_ROOT / "asoba_deploy"
LAMBDA_LAYER_DIR = BUILD_DIR / "lambda-layer"
DOCUMENTS_DIR = PROJECT_ROOT / "ssm_documents"
RUNTIME_DIR = PROJECT_ROOT / "instance_runtime"
INSTANCE_TOOLS_DIR = BUILD_DIR / "instance-tools"  # built by `make setup` (stacks/instance_tools.py)
