"""The sandbox's stand-ins for systemd and the NVIDIA driver (test and demo support only).

The executables beside this file (``systemctl``, ``journalctl``, ``nvidia-smi`` in ``gpu/``)
are thin wrappers around the functions here. They run with ``python3 -S`` (standard library
only) and find their state through ``SANDBOX_ROOT``:

    $SANDBOX_ROOT/etc/systemd/system/     unit files (what the SSM documents write)
    $SANDBOX_ROOT/run/sandbox/units/      one JSON state file per unit that ever ran
    $SANDBOX_ROOT/run/sandbox/loaded/     unit files as of the last daemon-reload
    $SANDBOX_ROOT/run/sandbox/logs/       the "journal": one log per unit
    $SANDBOX_ROOT/run/sandbox/gpu.json    the fake GPU and which unit holds how much of it

A started unit runs as a real background process under a small supervisor (this module run as a
script), which records its MainPID and exit status, applies Restart=/RestartSec=, stops it with
SIGTERM then SIGKILL after TimeoutStopSec=, and kills it if the test process that owns the
sandbox (SANDBOX_OWNER_PID) dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

# Each shim call is a new process: keep imports lean (typing and subprocess only when needed).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

UNIT_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_TIMEOUT_CAP_S = 20.0  # a sandbox never waits systemd's full 90 s default
ACTIVE_STATES = ("active", "activating", "reloading", "deactivating")


# --------------------------------------------------------------------------- sandbox state


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


def unit_dir(root: Path) -> Path:
    return root / "etc" / "systemd" / "system"


def _state_path(root: Path, unit: str) -> Path:
    return state_dir(root) / "units" / f"{unit}.json"


def log_path(root: Path, unit: str) -> Path:
    return state_dir(root) / "logs" / f"{unit}.log"


class _Suppress:
    """contextlib.suppress without importing contextlib."""

    def __init__(self, *errors: type[BaseException]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: object, traceback: object) -> bool:
        return kind is not None and issubclass(kind, self.errors)


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


def journal(root: Path, unit: str, message: str) -> None:
    path = log_path(root, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(f"{message}\n")


# --------------------------------------------------------------------------- unit files


def parse_unit_file(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: sections, repeated keys, backslash continuations, # and ; comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            continue
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile: KEY=VALUE lines, comments, optional single or double quotes."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def _loaded_path(root: Path, unit: str) -> Path:
    return state_dir(root) / "loaded" / unit


def unit_file(root: Path, unit: str) -> Path | None:
    """The unit as systemd knows it: the copy from the last daemon-reload, else the file on disk."""
    loaded = _loaded_path(root, unit)
    if loaded.is_file():
        return loaded
    on_disk = unit_dir(root) / unit
    return on_disk if on_disk.is_file() else None


def daemon_reload(root: Path) -> None:
    loaded = state_dir(root) / "loaded"
    loaded.mkdir(parents=True, exist_ok=True)
    present = set()
    directory = unit_dir(root)
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_file() and path.name.endswith(".service"):
                present.add(path.name)
                (loaded / path.name).write_bytes(path.read_bytes())
    for path in loaded.iterdir():
        if path.name not in present:
            path.unlink()


def _service_section(path: Path) -> dict[str, list[str]]:
    return parse_unit_file(path.read_text()).get("Service", {})


def _last(section: dict[str, list[str]], key: str, default: str = "") -> str:
    values = section.get(key)
    return values[-1] if values else default


def _seconds(value: str, default: float) -> float:
    value = value.strip()
    if not value:
        return default
    if value == "infinity":
        return STOP_TIMEOUT_CAP_S
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0}
    for suffix, factor in units.items():
        if value.endswith(suffix) and value[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(value[: -len(suffix)]) * factor
    try:
        return float(value)
    except ValueError:
        return default


def unit_environment(root: Path, section: dict[str, list[str]]) -> dict[str, str]:
    """What systemd hands the service: a clean environment plus Environment= and EnvironmentFile=."""
    shims = Path(__file__).resolve().parent
    path = f"{shims}:{shims / 'gpu'}:" if read_gpu_config(root).get("gpus") else f"{shims}:"
    env = {
        "PATH": path + UNIT_DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "HOME": str(state_dir(root) / "home"),
        "SANDBOX_ROOT": str(root),
        "INVOCATION_ID": os.urandom(16).hex(),
    }
    owner = os.environ.get("SANDBOX_OWNER_PID")
    if owner:
        env["SANDBOX_OWNER_PID"] = owner
    user = _last(section, "User")
    if user:
        env["USER"] = env["LOGNAME"] = user
    for value in section.get("Environment", []):
        for item in shlex.split(value):
            if "=" in item:
                key, val = item.split("=", 1)
                env[key] = val
    for value in section.get("EnvironmentFile", []):
        optional = value.startswith("-")
        path_text = value.lstrip("-")
        try:
            env.update(parse_env_file(Path(path_text).read_text()))
        except OSError as error:
            if not optional:
                raise SandboxError(f"Failed to load environment file {path_text}: {error}", 1) from None
    return env


def exec_argv(section: dict[str, list[str]]) -> list[str]:
    value = _last(section, "ExecStart")
    if not value:
        raise SandboxError("Service has no ExecStart= setting", 1)
    while value and value[0] in "-@+!:":
        value = value[1:]
    return shlex.split(value)


# --------------------------------------------------------------------------- the supervisor


def supervise(root: Path, unit: str, path: Path) -> int:
    """Run one unit until it is stopped or ends for good; keep its state file current."""
    import subprocess

    section = _service_section(path)
    restart = _last(section, "Restart", "no")
    restart_sec = _seconds(_last(section, "RestartSec"), 0.1)
    stop_timeout = min(_seconds(_last(section, "TimeoutStopSec"), 90.0), STOP_TIMEOUT_CAP_S)
    owner = int(os.environ.get("SANDBOX_OWNER_PID", "0") or 0)
    stop = {"requested": False}

    def on_term(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    write_state(root, unit, supervisor_pid=os.getpid())
    restarts = 0
    while True:
        try:
            env = unit_environment(root, section)
            argv = exec_argv(section)
            cwd = _last(section, "WorkingDirectory").lstrip("-") or "/"
        except SandboxError as error:
            journal(root, unit, f"{unit}: {error}")
            write_state(
                root,
                unit,
                active_state="failed",
                sub_state="failed",
                main_pid=0,
                result="resources",
                exec_main_status=None,
                exited_at=time.time(),
            )
            return 1
        log_path(root, unit).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path(root, unit), "ab")  # noqa: SIM115 - the child owns it while it runs
        try:
            child = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as error:
            log.close()
            journal(root, unit, f"{unit}: Failed to execute {argv[0]}: {error}")
            write_state(
                root,
                unit,
                active_state="failed",
                sub_state="failed",
                main_pid=0,
                result="exit-code",
                exec_main_status=203,
                exited_at=time.time(),
            )
            return 1
        log.close()
        write_state(
            root,
            unit,
            active_state="active",
            sub_state="running",
            main_pid=child.pid,
            started_at=time.time(),
            n_restarts=restarts,
            result="success",
            exec_main_status=None,
            exited_at=None,
            user=_last(section, "User"),
        )
        journal(root, unit, f"Started {unit} (pid {child.pid}).")
        status = _wait_child(child, stop, owner)
        if stop["requested"] or (owner and not pid_alive(owner)):
            write_state(root, unit, active_state="deactivating", sub_state="stop-sigterm")
            _terminate(child, stop_timeout)
            journal(root, unit, f"Stopped {unit}.")
            write_state(
                root,
                unit,
                active_state="inactive",
                sub_state="dead",
                main_pid=0,
                last_main_pid=child.pid,
                exec_main_status=child.returncode,
                exited_at=time.time(),
                result="success",
            )
            return 0
        _kill_group(child.pid, signal.SIGKILL)  # leftovers of a service that exited on its own
        how = f"code=killed, status={-status}" if status < 0 else f"code=exited, status={status}"
        journal(root, unit, f"{unit}: Main process exited, {how}")
        again = restart == "always" or (restart in ("on-failure", "on-abnormal") and status != 0)
        if not again:
            state = "inactive" if status == 0 else "failed"
            write_state(
                root,
                unit,
                active_state=state,
                sub_state="dead" if status == 0 else "failed",
                main_pid=0,
                last_main_pid=child.pid,
                exec_main_status=status,
                exited_at=time.time(),
                result="success" if status == 0 else "exit-code",
            )
            return 0
        write_state(
            root,
            unit,
            active_state="activating",
            sub_state="auto-restart",
            main_pid=0,
            last_main_pid=child.pid,
            exec_main_status=status,
            exited_at=time.time(),
            result="exit-code" if status else "success",
        )
        deadline = time.monotonic() + restart_sec
        while time.monotonic() < deadline and not stop["requested"]:
            time.sleep(0.05)
        if stop["requested"]:
            write_state(root, unit, active_state="inactive", sub_state="dead", main_pid=0)
            return 0
        restarts += 1


def _wait_child(child: subprocess.Popen[bytes], stop: dict[str, bool], owner: int) -> int:
    import subprocess

    checked = time.monotonic()
    while True:
        try:
            return child.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
        if stop["requested"]:
            return -1
        if owner and time.monotonic() - checked > 1.0:
            checked = time.monotonic()
            if not pid_alive(owner):
                return -1


def _kill_group(pid: int, sig: int) -> None:
    with _Suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _terminate(child: subprocess.Popen[bytes], timeout: float) -> None:
    import subprocess

    _kill_group(child.pid, signal.SIGTERM)
    with _Suppress(subprocess.TimeoutExpired):
        child.wait(timeout=timeout)
    _kill_group(child.pid, signal.SIGKILL)
    with _Suppress(subprocess.TimeoutExpired):
        child.wait(timeout=5)


# --------------------------------------------------------------------------- systemctl


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
        description = _last(sections.get("Unit", {}), "Description", unit)
        user = _last(sections.get("Service", {}), "User")
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
        if not _loaded_path(root, unit).is_file():
            # systemd loads a unit it has never seen on first use.
            (state_dir(root) / "loaded").mkdir(parents=True, exist_ok=True)
            _loaded_path(root, unit).write_bytes(path.read_bytes())
            path = _loaded_path(root, unit)
        write_state(
            root,
            unit,
            active_state="activating",
            sub_state="start",
            main_pid=0,
            supervisor_pid=0,
            requested_at=time.time(),
        )
        supervisor = subprocess.Popen(
            [sys.executable, "-S", __file__, "supervise", str(root), unit, str(path)],
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
        with _Suppress(ProcessLookupError):
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


def kill_unit(root: Path, unit: str) -> None:
    """SIGKILL a unit's processes and its supervisor, whatever their state (sandbox teardown)."""
    state = read_state(root, unit)
    for key in ("main_pid", "supervisor_pid"):
        pid = int(state.get(key) or 0)
        if pid > 0:
            _kill_group(pid, signal.SIGKILL)
            with _Suppress(ProcessLookupError, PermissionError):
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


def known_units(root: Path) -> list[str]:
    names: set[str] = set()
    directory = unit_dir(root)
    if directory.is_dir():
        names.update(p.name for p in directory.iterdir() if p.name.endswith(".service") and p.is_file())
    units = state_dir(root) / "units"
    if units.is_dir():
        names.update(p.name[: -len(".json")] for p in units.glob("*.service.json"))
    return sorted(names)


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


def systemctl_main(argv: list[str]) -> int:
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
        command, units = words[0], [_unit_name(u) for u in words[1:]]
        return _dispatch(root, command, units, wanted, value_only, now)
    except SandboxError as error:
        print(str(error), file=sys.stderr)
        return error.status


def _unit_name(name: str) -> str:
    return name if "." in name else f"{name}.service"


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


# --------------------------------------------------------------------------- journalctl


def journalctl_main(argv: list[str]) -> int:
    try:
        root = sandbox_root()
    except SandboxError as error:
        print(str(error), file=sys.stderr)
        return 1
    units: list[str] = []
    lines: int | None = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-u", "--unit") and args:
            units.append(_unit_name(args.pop(0)))
        elif arg.startswith("--unit="):
            units.append(_unit_name(arg.split("=", 1)[1]))
        elif arg in ("-n", "--lines") and args:
            lines = int(args.pop(0))
        elif arg.startswith("--lines="):
            lines = int(arg.split("=", 1)[1])
        elif arg.startswith("-n") and arg[2:].isdigit():
            lines = int(arg[2:])
        elif arg in ("-o", "--output", "--since", "--until", "-p", "--priority") and args:
            args.pop(0)
    output: list[str] = []
    for unit in units or known_units(root):
        try:
            output.extend(log_path(root, unit).read_text(errors="replace").splitlines())
        except OSError:
            continue
    if lines is not None:
        output = output[-lines:] if lines > 0 else []
    if not output:
        print("-- No entries --")
    else:
        print("\n".join(output))
    return 0


# --------------------------------------------------------------------------- nvidia-smi


GPU_FIELDS = {
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "driver_version",
    "count",
}
APP_FIELDS = {"pid", "used_memory", "used_gpu_memory", "process_name", "name", "gpu_uuid"}
_MIB_FIELDS = {"memory.total", "memory.used", "memory.free", "used_memory", "used_gpu_memory"}


def read_gpu_config(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir(root) / "gpu.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def compute_apps(root: Path) -> list[tuple[int, int]]:
    """(pid, MiB) for every unit that holds GPU memory; a stopped unit may hold it a while longer."""
    apps: list[tuple[int, int]] = []
    claims = read_gpu_config(root).get("claims", {})
    now = time.time()
    for unit, claim in sorted(claims.items()):
        mib = int(claim.get("mib", 0))
        state = read_state(root, unit)
        pid = int(state.get("main_pid") or 0)
        if pid_alive(pid):
            apps.append((pid, mib))
            continue
        last = int(state.get("last_main_pid") or 0)
        exited = state.get("exited_at")
        linger = claim.get("linger_s", 0)
        if last and exited is not None and (linger is None or now < float(exited) + float(linger)):
            apps.append((last, mib))
    return apps


def _csv(rows: list[list[tuple[str, object]]], header: bool, units: bool) -> str:
    out = []
    if header and rows:
        out.append(", ".join(f"{name} [MiB]" if name in _MIB_FIELDS else name for name, _ in rows[0]))
    for row in rows:
        cells = []
        for name, value in row:
            cells.append(f"{value} MiB" if name in _MIB_FIELDS and units else str(value))
        out.append(", ".join(cells))
    return "\n".join(out)


def nvidia_smi_main(argv: list[str]) -> int:
    try:
        root = sandbox_root()
    except SandboxError as error:
        print(str(error), file=sys.stderr)
        return 9
    config = read_gpu_config(root)
    gpus = config.get("gpus", [])
    if not gpus:
        print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
        return 9
    apps = compute_apps(root)
    used = sum(mib for _, mib in apps) + int(config.get("baseline_used_mib", 0))
    query_gpu = query_apps = None
    header, units = True, True
    for arg in argv:
        if arg.startswith("--query-gpu="):
            query_gpu = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--query-compute-apps="):
            query_apps = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--format="):
            parts = arg.split("=", 1)[1].split(",")
            header = "noheader" not in parts
            units = "nounits" not in parts
        elif arg in ("-L", "--list-gpus"):
            for gpu in gpus:
                print(f"GPU {gpu['index']}: {gpu['name']} (UUID: {gpu['uuid']})")
            return 0
    if query_gpu is not None:
        bad = [f for f in query_gpu if f not in GPU_FIELDS]
        if bad:
            print(f'Field "{bad[0]}" is not a valid field to query.\n')
            return 2
        rows = []
        for gpu in gpus:
            total = int(gpu["memory_total_mib"])
            gpu_used = used if int(gpu["index"]) == 0 else 0
            values = {
                "index": gpu["index"],
                "name": gpu["name"],
                "uuid": gpu["uuid"],
                "memory.total": total,
                "memory.used": gpu_used,
                "memory.free": max(total - gpu_used, 0),
                "utilization.gpu": 0,
                "driver_version": config.get("driver_version", "535.183.01"),
                "count": len(gpus),
            }
            rows.append([(f, values[f]) for f in query_gpu])
        text = _csv(rows, header, units)
        if text:
            print(text)
        return 0
    if query_apps is not None:
        bad = [f for f in query_apps if f not in APP_FIELDS]
        if bad:
            print(f'Field "{bad[0]}" is not a valid field to query.\n')
            return 2
        rows = []
        for pid, mib in apps:
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                name = "[Not Found]"
            values = {
                "pid": pid,
                "used_memory": mib,
                "used_gpu_memory": mib,
                "process_name": name,
                "name": name,
                "gpu_uuid": gpus[0]["uuid"],
            }
            rows.append([(f, values[f]) for f in query_apps])
        if header and not rows:
            rows_text = ", ".join(f"{f} [MiB]" if f in _MIB_FIELDS else f for f in query_apps)
            print(rows_text)
            return 0
        text = _csv(rows, header, units)
        if text:
            print(text)
        return 0
    for gpu in gpus:
        print(f"| {gpu['index']}  {gpu['name']:<20} | {used}MiB / {gpu['memory_total_mib']}MiB |")
    for pid, mib in apps:
        print(f"|   GPU {gpus[0]['index']}   PID {pid}   C   {mib}MiB |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "supervise":
        _root, _unit = Path(sys.argv[2]), sys.argv[3]
        try:
            sys.exit(supervise(_root, _unit, Path(sys.argv[4])))
        except Exception as _error:
            journal(_root, _unit, f"{_unit}: sandbox supervisor failed: {_error!r}")
            write_state(
                _root,
                _unit,
                active_state="failed",
                sub_state="failed",
                main_pid=0,
                result="resources",
                exited_at=time.time(),
            )
            raise
    print("usage: _sandboxlib.py supervise ROOT UNIT UNIT_FILE", file=sys.stderr)
    sys.exit(2)
