"""Sandbox state that every shim reads: where it lives, the per-unit state files, the GPU config.

Everything is found through ``SANDBOX_ROOT``:

    $SANDBOX_ROOT/etc/systemd/system/     unit files (what the SSM documents write)
    $SANDBOX_ROOT/run/sandbox/units/      one JSON state file per unit that ever ran
    $SANDBOX_ROOT/run/sandbox/loaded/     unit files as of the last daemon-reload
    $SANDBOX_ROOT/run/sandbox/logs/       the "journal": one log per unit
    $SANDBOX_ROOT/run/sandbox/gpu.json    the fake GPU and which unit holds how much of it
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

# Each shim call is a new process: keep imports lean (typing and subprocess only when needed).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SandboxError(Exception):
    """A systemctl-style failure: message for stderr, exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def sandbox_root() -> Path:
    root = os.environ.get("SANDBOX_ROOT")
    if not root:
        raise SandboxError("SANDBOX_ROOT is not set: this shim only works inside a test sandbox", 1)
    return Path(root)


def state_dir(root: Path) -> Path:
    return root / "run" / "sandbox"


def _state_path(root: Path, unit: str) -> Path:
    return state_dir(root) / "units" / f"{unit}.json"


def log_path(root: Path, unit: str) -> Path:
    return state_dir(root) / "logs" / f"{unit}.log"


class Suppress:
    """contextlib.suppress without importing contextlib."""

    def __init__(self, *errors: type[BaseException]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: object, traceback: object) -> bool:
        return kind is not None and issubclass(kind, self.errors)


def read_state(root: Path, unit: str) -> dict[str, Any]:
    try:
        data = json.loads(_state_path(root, unit).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(root: Path, unit: str, **changes: Any) -> dict[str, Any]:
    """Read-modify-write one unit's state under its own lock (the supervisor and systemctl race)."""
    path = _state_path(root, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(root, unit)
        state.update(changes)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
    return state


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def read_gpu_config(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir(root) / "gpu.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
