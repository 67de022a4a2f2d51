"""The systemctl stand-in: unit states and properties, start/stop through the supervisor, enablement."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path

from .common import (
    SandboxError,
    Suppress,
    log_path,
    pid_alive,
    read_state,
    sandbox_root,
    state_dir,
    write_state,
)
from .systemd import (
    STOP_TIMEOUT_CAP_S,
    daemon_reload,
    kill_group,
    known_units,
    last,
    loaded_path,
    parse_unit_file,
    unit_dir,
    unit_file,
    unit_name,
)

ACTIVE_STATES = ("active", "activating", "reloading", "deactivating")


class locked:  # a function-like name: used as `with locked(root):`
    """The sandbox-wide systemctl lock (one start or stop decision at a time)."""

    def __init__(self, root: Path) -> None:
        self.path = state_dir(root) / "lock"

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")  # closed in __exit__
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _known(root: Path, unit: str) -> bool:
    return unit_file(root, unit) is not None or bool(read_state(root, unit))


def active_state(root: Path, unit: str) -> str:
    state = read_state(root, unit)
    value = str(state.get("active_state", "inactive"))
    supervisor = state.get("supervisor_pid")
    if value in ACTIVE_STATES and not pid_alive(supervisor):
        # The supervisor died without saying so (killed by a test's cleanup): the unit is gone.
        return "inactive" if value == "deactivating" else "failed"
    return value


def main_pid(root: Path, unit: str) -> int:
    state = read_state(root, unit)
    pid = int(state.get("main_pid") or 0)
    return pid if active_state(root, unit) == "active" and pid_alive(pid) else 0


def _wanted_links(root: Path, unit: str) -> list[Path]:
    directory = unit_dir(root)
    if not directory.is_dir():
        return []
    return sorted(
        p / unit for p in directory.glob("*.wants") if (p / unit).is_symlink() or (p / unit).exists()
    )


def unit_file_state(root: Path, unit: str) -> str:
    if not (unit_dir(root) / unit).is_file():
        return ""
    return "enabled" if _wanted_links(root, unit) else "disabled"


def _tree_pids(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def properties(root: Path, unit: str) -> dict[str, str]:
    state = read_state(root, unit)
    path = unit_file(root, unit)
    load = "loaded" if path is not None else "not-found"
    active = active_state(root, unit)
    pid = main_pid(root, unit)
    description = unit
    user = ""
    if path is not None:
        sections = parse_unit_file(path.read_text())
        description = last(sections.get("Unit", {}), "Description", unit)
        user = last(sections.get("Service", {}), "User")
    memory = str(_rss_bytes(_tree_pids(pid))) if pid else "[not set]"
    status = state.get("exec_main_status")
    sub = str(state.get("sub_state", "dead")) if active == state.get("active_state") else "dead"
    return {
        "Id": unit,
        "Names": unit,
        "Description": description,
        "LoadState": load,
        "ActiveState": active,
        "SubState": sub,
        "Result": str(state.get("result", "success")),
        "MainPID": str(pid),
        "ExecMainPID": str(pid or state.get("last_main_pid") or 0),
        "ExecMainStatus": str(status if isinstance(status, int) and status >= 0 else 0),
        "NRestarts": str(state.get("n_restarts", 0)),
        "MemoryCurrent": memory,
        "User": user,
        "FragmentPath": str(unit_dir(root) / unit) if path is not None else "",
        "UnitFileState": unit_file_state(root, unit),
    }


def start(root: Path, unit: str) -> None:
    import subprocess

    with locked(root):
        path = unit_file(root, unit)
        if path is None:
            raise SandboxError(f"Failed to start {unit}: Unit {unit} not found.", 5)
        state = read_state(root, unit)
        if active_state(root, unit) in ("active", "activating") and pid_alive(state.get("supervisor_pid")):
            return
        if not loaded_path(root, unit).is_file():
            # systemd loads a unit it has never seen on first use.
            (state_dir(root) / "loaded").mkdir(parents=True, exist_ok=True)
            loaded_path(root, unit).write_bytes(path.read_bytes())
            path = loaded_path(root, unit)
        write_state(
            root,
            unit,
            active_state="activating",
            sub_state="start",
            main_pid=0,
            supervisor_pid=0,
            requested_at=time.time(),
        )
        # A script beside the executables, so that lib/ imports as a package there too.
        script = Path(__file__).resolve().parents[1] / "_supervisor.py"
        supervisor = subprocess.Popen(
            [sys.executable, "-S", str(script), "supervise", str(root), unit, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        write_state(root, unit, supervisor_pid=supervisor.pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = read_state(root, unit)
        if state.get("main_pid") or state.get("active_state") in ("failed", "inactive"):
            break
        if supervisor.poll() is not None:
            break
        time.sleep(0.02)
    state = read_state(root, unit)
    if state.get("active_state") == "failed" and state.get("exec_main_status") == 203:
        raise SandboxError(
            f"Job for {unit} failed because of unavailable resources or another system error.\n"
            f'See "systemctl status {unit}" and "journalctl -xeu {unit}" for details.',
            1,
        )


def stop(root: Path, unit: str) -> None:
    if not _known(root, unit):
        raise SandboxError(f"Failed to stop {unit}: Unit {unit} not loaded.", 5)
    state = read_state(root, unit)
    supervisor = int(state.get("supervisor_pid") or 0)
    if pid_alive(supervisor):
        write_state(root, unit, active_state="deactivating", sub_state="stop-sigterm")
        with Suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_CAP_S + 5
        while pid_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(supervisor):
            kill_unit(root, unit)
    state = read_state(root, unit)
    if state and state.get("active_state") != "inactive":
        write_state(
            root,
            unit,
            active_state="inactive",
            sub_state="dead",
            main_pid=0,
            exited_at=state.get("exited_at") or time.time(),
        )


def reload(root: Path, unit: str) -> None:
    """ExecReload= of an active unit, $MAINPID its main process (systemd's own variable), as
    systemd runs it; a unit without one, or not active, is refused as systemd refuses it."""
    import shlex
    import subprocess

    path = unit_file(root, unit)
    if path is None:
        raise SandboxError(f"Failed to reload {unit}: Unit {unit} not found.", 5)
    command = last(parse_unit_file(path.read_text()).get("Service", {}), "ExecReload")
    if not command:
        raise SandboxError(f"Failed to reload {unit}: Job type reload is not applicable for unit {unit}.", 1)
    if active_state(root, unit) != "active":
        raise SandboxError(
            f"Failed to reload {unit}: Unit {unit} cannot be reloaded because it is inactive.", 1
        )
    pid = str(main_pid(root, unit))
    argv = [
        part.replace("${MAINPID}", pid).replace("$MAINPID", pid)
        for part in shlex.split(command.lstrip("-@+!:"))
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SandboxError(
            f"Job for {unit} failed because the control process exited with error code.\n"
            f'See "systemctl status {unit}" and "journalctl -xeu {unit}" for details.',
            1,
        )


def kill_unit(root: Path, unit: str) -> None:
    """SIGKILL a unit's processes and its supervisor, whatever their state (sandbox teardown)."""
    state = read_state(root, unit)
    for key in ("main_pid", "supervisor_pid"):
        pid = int(state.get(key) or 0)
        if pid > 0:
            kill_group(pid, signal.SIGKILL)
            with Suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    if state:
        write_state(
            root,
            unit,
            active_state="inactive",
            sub_state="dead",
            main_pid=0,
            last_main_pid=state.get("main_pid") or state.get("last_main_pid") or 0,
            exited_at=time.time(),
        )


def enable(root: Path, unit: str) -> None:
    path = unit_dir(root) / unit
    if not path.is_file():
        raise SandboxError(f"Failed to enable unit: Unit file {unit} does not exist.", 1)
    install = parse_unit_file(path.read_text()).get("Install", {})
    targets = " ".join(install.get("WantedBy", [])).split()
    if not targets:
        print(
            f"The unit files have no installation config (WantedBy=, RequiredBy=, Also=, Alias=\n"
            f"settings in the [Install] section) for {unit}.",
            file=sys.stderr,
        )
        return
    for target in targets:
        link = unit_dir(root) / f"{target}.wants" / unit
        if link.is_symlink() and os.readlink(link) == str(path):
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path)
        print(f"Created symlink {link} \u2192 {path}.", file=sys.stderr)


def disable(root: Path, unit: str) -> None:
    links = _wanted_links(root, unit)
    if not links and not (unit_dir(root) / unit).is_file():
        raise SandboxError(f"Failed to disable unit: Unit file {unit} does not exist.", 1)
    for link in links:
        link.unlink()
        print(f'Removed "{link}".', file=sys.stderr)


def _print_status(root: Path, unit: str) -> int:
    props = properties(root, unit)
    if props["LoadState"] == "not-found" and not read_state(root, unit):
        print(f"Unit {unit} could not be found.", file=sys.stderr)
        return 4
    print(f"\u25cf {unit} - {props['Description']}")
    print(
        f"     Loaded: {props['LoadState']} ({props['FragmentPath']}; {props['UnitFileState'] or 'static'})"
    )
    print(f"     Active: {props['ActiveState']} ({props['SubState']})")
    if props["MainPID"] != "0":
        print(f"   Main PID: {props['MainPID']}")
    try:
        lines = log_path(root, unit).read_text(errors="replace").splitlines()[-10:]
    except OSError:
        lines = []
    if lines:
        print()
        print("\n".join(lines))
    return 0 if props["ActiveState"] == "active" else 3


def main(argv: list[str]) -> int:
    try:
        root = sandbox_root()
        wanted: list[str] = []
        value_only = now = False
        words: list[str] = []
        args = list(argv)
        while args:
            arg = args.pop(0)
            if arg in ("-p", "--property"):
                wanted.extend(args.pop(0).split(",") if args else [])
            elif arg.startswith("--property="):
                wanted.extend(arg.split("=", 1)[1].split(","))
            elif arg.startswith("-p") and len(arg) > 2:
                wanted.extend(arg[2:].split(","))
            elif arg == "--value":
                value_only = True
            elif arg == "--now":
                now = True
            elif arg == "--version":
                print("systemd 252 (252.sandbox)\n+SANDBOX shim of tests/sandbox")
                return 0
            elif arg == "--user":
                raise SandboxError("systemctl --user is not emulated by the sandbox", 1)
            elif arg.startswith("-"):
                continue  # --no-pager, --quiet, --no-block, --system, --no-legend, --plain, --all ...
            else:
                words.append(arg)
        if not words:
            raise SandboxError("systemctl: the sandbox needs a command", 1)
        command, units = words[0], [unit_name(u) for u in words[1:]]
        return _dispatch(root, command, units, wanted, value_only, now)
    except SandboxError as error:
        print(str(error), file=sys.stderr)
        return error.status


def _dispatch(
    root: Path, command: str, units: list[str], wanted: list[str], value_only: bool, now: bool
) -> int:
    if command == "daemon-reload":
        with locked(root):
            daemon_reload(root)
        return 0
    if command == "list-units":
        for unit in known_units(root):
            props = properties(root, unit)
            fields = ("LoadState", "ActiveState", "SubState", "Description")
            print(" ".join([unit, *(props[name] for name in fields)]))
        return 0
    if command == "reset-failed":
        for unit in units or known_units(root):
            if active_state(root, unit) == "failed":
                write_state(root, unit, active_state="inactive", sub_state="dead", result="success")
        return 0
    if not units:
        raise SandboxError(f"Too few arguments for '{command}'.", 1)
    status = 0
    for unit in units:
        if command == "start":
            start(root, unit)
        elif command == "stop":
            stop(root, unit)
        elif command == "restart":
            if _known(root, unit) and unit_file(root, unit) is not None:
                stop(root, unit)
            start(root, unit)
        elif command == "reload":
            reload(root, unit)
        elif command == "is-active":
            state = active_state(root, unit) if _known(root, unit) else "inactive"
            print(state)
            status = status or (0 if state == "active" else 3)
        elif command == "is-failed":
            state = active_state(root, unit)
            print(state)
            status = status or (0 if state == "failed" else 1)
        elif command == "is-enabled":
            state = unit_file_state(root, unit)
            if not state:
                raise SandboxError(f"Failed to get unit file state for {unit}: No such file or directory", 1)
            print(state)
            status = status or (0 if state == "enabled" else 1)
        elif command == "enable":
            enable(root, unit)
            if now:
                start(root, unit)
        elif command == "disable":
            disable(root, unit)
            if now:
                stop(root, unit)
        elif command == "show":
            props = properties(root, unit)
            keys = wanted or list(props)
            for key in keys:
                value = props.get(key, "")
                print(value if value_only else f"{key}={value}")
        elif command == "status":
            status = status or _print_status(root, unit)
        else:
            raise SandboxError(f"Unknown command verb {command} (not emulated by the sandbox).", 1)
    return status
