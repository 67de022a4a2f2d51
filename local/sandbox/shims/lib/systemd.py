"""systemd itself: unit files, daemon-reload, and the supervisor that runs one unit.

A started unit runs as a real background process under a supervisor (``main`` here, run through
``shims/_supervisor.py``), which records its MainPID and exit status, applies Restart=/RestartSec=,
stops it with SIGTERM then SIGKILL after TimeoutStopSec=, and kills it if the test process that
owns the sandbox (SANDBOX_OWNER_PID) dies.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

from .common import SandboxError, Suppress, log_path, pid_alive, read_gpu_config, state_dir, write_state

# Each shim call is a new process: keep imports lean (typing and subprocess only when needed).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

UNIT_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_TIMEOUT_CAP_S = 20.0  # a sandbox never waits systemd's full 90 s default


def unit_dir(root: Path) -> Path:
    return root / "etc" / "systemd" / "system"


def journal(root: Path, unit: str, message: str) -> None:
    path = log_path(root, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(f"{message}\n")


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


def loaded_path(root: Path, unit: str) -> Path:
    return state_dir(root) / "loaded" / unit


def unit_file(root: Path, unit: str) -> Path | None:
    """The unit as systemd knows it: the copy from the last daemon-reload, else the file on disk."""
    loaded = loaded_path(root, unit)
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


def last(section: dict[str, list[str]], key: str, default: str = "") -> str:
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
    shims = Path(__file__).resolve().parents[1]
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
    # No IMDS here: a service reaches the instance role's credentials and the local endpoint as
    # the agent does (Sandbox.agent_environment), so its own S3 requests (the runtime streaming
    # weights) are signed with the instance's key and judged by local/iam_http.py. On EC2 the
    # SDKs' default chain finds the same role through IMDS, and the public endpoint.
    aws = state_dir(root) / "aws"
    if (aws / "credentials").is_file():
        env["AWS_CONFIG_FILE"] = str(aws / "config")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(aws / "credentials")
        endpoint = (aws / "endpoint").read_text().strip() if (aws / "endpoint").is_file() else ""
        if endpoint:
            env["AWS_ENDPOINT_URL"] = endpoint
            # moto's S3 reads the whole object for every ranged GET (DESIGN 6): the streamer's
            # default 16 parallel small ranges of a 257 MiB model time out there, so a service
            # streaming from the local cloud takes a few large ranges (AWS needs no such thing).
            env["RUNAI_STREAMER_CHUNK_BYTESIZE"] = str(64 << 20)
            env["RUNAI_STREAMER_CONCURRENCY"] = "4"
    user = last(section, "User")
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
    value = last(section, "ExecStart")
    if not value:
        raise SandboxError("Service has no ExecStart= setting", 1)
    while value and value[0] in "-@+!:":
        value = value[1:]
    return shlex.split(value)


def known_units(root: Path) -> list[str]:
    names: set[str] = set()
    directory = unit_dir(root)
    if directory.is_dir():
        names.update(p.name for p in directory.iterdir() if p.name.endswith(".service") and p.is_file())
    units = state_dir(root) / "units"
    if units.is_dir():
        names.update(p.name[: -len(".json")] for p in units.glob("*.service.json"))
    return sorted(names)


def unit_name(name: str) -> str:
    return name if "." in name else f"{name}.service"


# --------------------------------------------------------------------------- the supervisor


def supervise(root: Path, unit: str, path: Path) -> int:
    """Run one unit until it is stopped or ends for good; keep its state file current."""
    import subprocess

    section = _service_section(path)
    restart = last(section, "Restart", "no")
    restart_sec = _seconds(last(section, "RestartSec"), 0.1)
    stop_timeout = min(_seconds(last(section, "TimeoutStopSec"), 90.0), STOP_TIMEOUT_CAP_S)
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
            cwd = last(section, "WorkingDirectory").lstrip("-") or "/"
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
            user=last(section, "User"),
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
        kill_group(child.pid, signal.SIGKILL)  # leftovers of a service that exited on its own
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


def kill_group(pid: int, sig: int) -> None:
    with Suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _terminate(child: subprocess.Popen[bytes], timeout: float) -> None:
    import subprocess

    kill_group(child.pid, signal.SIGTERM)
    with Suppress(subprocess.TimeoutExpired):
        child.wait(timeout=timeout)
    kill_group(child.pid, signal.SIGKILL)
    with Suppress(subprocess.TimeoutExpired):
        child.wait(timeout=5)


def main(argv: list[str]) -> int:
    """The supervisor process, as systemctl's start runs it: ``supervise ROOT UNIT UNIT_FILE``."""
    if len(argv) == 4 and argv[0] == "supervise":
        root, unit = Path(argv[1]), argv[2]
        try:
            return supervise(root, unit, Path(argv[3]))
        except Exception as error:
            journal(root, unit, f"{unit}: sandbox supervisor failed: {error!r}")
            write_state(
                root,
                unit,
                active_state="failed",
                sub_state="failed",
                main_pid=0,
                result="resources",
                exited_at=time.time(),
            )
            raise
    print("usage: _supervisor.py supervise ROOT UNIT UNIT_FILE", file=sys.stderr)
    return 2
