"""A sandbox "instance": a folder laid out like the GPU instance, driven by the SSM documents.

    sandbox = Sandbox(tmp_path / "instance", instance_id, gpu=True, endpoint_url=moto_url)
    sandbox.install_fake_flux(port)                      # flux-api.service answering on port
    ssm.send_command(InstanceIds=[sandbox.instance_id], DocumentName="collect-resources",
                     Parameters=sandbox.parameters("collect-resources"))
    ...
    sandbox.close()                                      # kills every process it started

Layout under ``root`` (the instance's ``/``): etc/systemd/system, etc/asoba-inference,
etc/profile.d, opt/models, opt/asoba-inference, var/lib/asoba-inference, and ``run/`` for the
sandbox's own state (shim state, journal, AWS config files, /tmp), which ``tree_digest()`` leaves
out, as /run is not part of an instance's disk; so is the SSM agent's own state under
var/lib/amazon/ssm (each command's orchestration folder: _script.sh, stdout, stderr).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from local.sandbox import agent
from local.sandbox.own_host import OwnHost
from local.sandbox.shims.lib.common import log_path, read_gpu_config
from local.sandbox.shims.lib.systemctl import kill_unit, main_pid, properties
from local.sandbox.shims.lib.systemd import known_units

SHIMS = Path(__file__).resolve().parent / "shims"
GPU_SHIMS = SHIMS / "gpu"
FAKE_FLUX = Path(__file__).resolve().parent / "fake_flux.py"
DOCUMENTS = Path(__file__).resolve().parents[2] / "ssm_documents"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"  # discard port: nothing answers, fast failure
PLATFORM_NAME, PLATFORM_VERSION = "Ubuntu", "22.04"  # /etc/os-release NAME and VERSION_ID


class Sandbox:
    """One sandbox instance registered with the local SSM agent under ``instance_id``."""

    def __init__(
        self,
        root: Path,
        instance_id: str,
        *,
        gpu: bool = False,
        endpoint_url: str | None = None,
        gpu_name: str = "NVIDIA A10G",
        gpu_memory_mib: int = 23028,
        hostname: str = "ip-10-0-0-10",
        extra_env: dict[str, str] | None = None,
        aws_cli: bool = False,
        base_python: str | Path | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        # The instance's torch Python (BasePython), absolute but not resolved (a venv's python is a
        # link out of the venv); None: this venv's interpreter.
        self._base_python = os.path.abspath(base_python) if base_python is not None else None
        self.instance_id = instance_id
        self.gpu = gpu
        self.endpoint_url = endpoint_url
        self.hostname = hostname
        self.extra_env = dict(extra_env or {})  # added to the scripts' environment (e.g. other credentials)
        # The instance profile's role: what the agent's own calls (aws:downloadContent, CloudWatch
        # output) are authorized as, when the local cloud enforces IAM; None: full rights.
        self.instance_role_arn: str | None = None
        # Where the stack's s5cmd lies in S3 (the S5cmdUri parameter of documents sent from tests).
        self.s5cmd_uri: str | None = None
        self.access_key_id = "ASIA" + instance_id.removeprefix("i-").upper().ljust(16, "0")[:16]
        # A host of its own (network, root folders) for a fleet of sandboxes; None: this machine's.
        self.own_host: OwnHost | None = None
        self.online = True
        # Its EC2 instance's power (local/sandbox/power.py): off while stopped, on once it booted.
        self.powered = True
        self.power_generation = 0  # each stop and start: a late transition of an earlier one is void
        self.shutdown_s = 0.5  # stopping -> stopped
        self.boot_s = 1.0  # pending -> running (then the enabled units start)
        self.agent_start_s = 0.5  # running -> the SSM agent Online
        self.invocation_delay_s = 0.0  # >0: GetCommandInvocation says InvocationDoesNotExist that long
        # Offline, a command waits for delivery this long (None: its TimeoutSeconds, at least 30 s).
        self.delivery_timeout_s: float | None = None
        self.last_ping = dt.datetime.now(dt.UTC)
        self.owner_pid = os.getpid()
        # An image that has the AWS CLI installed (a fresh one has none): the project's, alone on PATH.
        self.aws_cli = aws_cli
        for folder in (
            self.unit_dir,
            self.profile_dir,
            self.models_root,
            self.run_dir / "home",
            self.aws_config_dir,
            self.run_dir / "tmp",
        ):
            folder.mkdir(parents=True, exist_ok=True)
        if aws_cli:
            self.image_bin.mkdir(parents=True, exist_ok=True)
            (self.image_bin / "aws").symlink_to(Path(sys.prefix) / "bin" / "aws")
        # No region here: on EC2 it is the agent's AWS_SSM_REGION_NAME (or IMDS), never a file.
        (self.aws_config_dir / "config").write_text("[default]\n")
        # The instance profile's role, as IMDS would hand it out (moto accepts any key).
        (self.aws_config_dir / "credentials").write_text(
            f"[default]\naws_access_key_id = {self.access_key_id}\naws_secret_access_key = testing\n"
        )
        # The endpoint the units' environment gets beside those files (shims/lib/systemd.py).
        (self.aws_config_dir / "endpoint").write_text((self.endpoint_url or UNREACHABLE_ENDPOINT) + "\n")
        gpus = []
        if gpu:
            gpus = [
                {
                    "index": 0,
                    "name": gpu_name,
                    "uuid": "GPU-5a3b6f0e-0000-4000-8000-000000000a10",
                    "memory_total_mib": gpu_memory_mib,
                }
            ]
        self._write_gpu_config(gpus=gpus, claims={}, baseline_used_mib=0)
        agent.register(self)

    @classmethod
    def launch(cls, ec2: Any, root: Path, **options: Any) -> Sandbox:
        """A sandbox on a new, running moto EC2 instance (``ec2`` is a boto3 EC2 client)."""
        reservation = ec2.run_instances(
            ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g5.4xlarge"
        )
        return cls(root, str(reservation["Instances"][0]["InstanceId"]), **options)

    # ------------------------------------------------------------------ layout

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc" / "systemd" / "system"

    @property
    def env_dir(self) -> Path:
        return self.root / "etc" / "asoba-inference"

    @property
    def image_bin(self) -> Path:
        """What the image installed beyond a fresh one (the AWS CLI when ``aws_cli``)."""
        return self.root / "usr" / "local" / "aws-cli" / "bin"

    @property
    def profile_dir(self) -> Path:
        return self.root / "etc" / "profile.d"

    @property
    def models_root(self) -> Path:
        return self.root / "opt" / "models"

    @property
    def runtime_root(self) -> Path:
        return self.root / "opt" / "asoba-inference"

    @property
    def state_dir(self) -> Path:
        return self.root / "var" / "lib" / "asoba-inference"

    @property
    def run_dir(self) -> Path:
        return self.root / "run" / "sandbox"

    @property
    def aws_config_dir(self) -> Path:
        """Stand-in for IMDS: the AWS config and credentials files the agent's environment names."""
        return self.run_dir / "aws"

    @property
    def orchestration_dir(self) -> Path:
        """The agent's orchestration root: <command-id>/<step>/_script.sh, stdout, stderr below it."""
        return self.root / "var" / "lib" / "amazon" / "ssm" / self.instance_id / "document" / "orchestration"

    @property
    def base_python(self) -> str:
        """The interpreter whose packages stand in for the instance's (torch and the runtime's):
        ``base_python`` when given (e.g. build/vllm-venv's, an image with vLLM), else this venv's."""
        if self._base_python is not None:
            return self._base_python
        return str(Path(sys.prefix) / "bin" / "python")

    @property
    def service_user(self) -> str:
        return getpass.getuser()

    # ------------------------------------------------------------------ SSM parameters

    def document_params(self, document: str | None = None) -> dict[str, str]:
        """Roots and machine facts as document parameters; only those ``document`` declares if named."""
        params = {
            "ModelsRoot": str(self.models_root),
            "RuntimeRoot": str(self.runtime_root),
            "UnitDir": str(self.unit_dir),
            "EnvDir": str(self.env_dir),
            "ProfileDir": str(self.profile_dir),
            "StateDir": str(self.state_dir),
            "BasePython": self.base_python,
            "ServiceUser": self.service_user,
        }
        if self.s5cmd_uri:
            params["S5cmdUri"] = self.s5cmd_uri
        if document is None:
            return params
        declared = declared_parameters(document)
        return {name: value for name, value in params.items() if name in declared}

    def parameters(self, document: str, **values: str | int) -> dict[str, list[str]]:
        """SendCommand ``Parameters`` for ``document``: the sandbox's roots plus ``values``."""
        merged: dict[str, str] = self.document_params(document)
        merged.update({name: str(value) for name, value in values.items()})
        return {name: [value] for name, value in merged.items()}

    # ------------------------------------------------------------------ environments

    def shim_env(self) -> dict[str, str]:
        """Environment in which the shims act on this sandbox (for calls from tests)."""
        # A fresh image: the system's bash, coreutils, curl and python3 (no pip modules), no AWS
        # CLI, no s5cmd; the project's interpreter is only BasePython, named where a document needs it.
        path = f"{SHIMS}:" + (f"{GPU_SHIMS}:" if self.gpu else "") + SYSTEM_PATH
        if self.aws_cli:
            path = f"{self.image_bin}:{path}"
        return {
            "PATH": path,
            "LANG": "C.UTF-8",
            "HOME": str(self.run_dir / "home"),
            "SANDBOX_ROOT": str(self.root),
            "SANDBOX_OWNER_PID": str(self.owner_pid),
        }

    def agent_environment(self) -> dict[str, str]:
        """The SSM agent process's own environment, as this instance's image configures it.

        A real agent (systemd unit without User=) has PATH and LANG, no HOME, and gets its region
        and credentials from IMDS. No IMDS here: credentials and the local endpoint come from AWS
        config files this environment names (local/sandbox/README.md lists what differs).
        """
        endpoint = self.endpoint_url or UNREACHABLE_ENDPOINT
        env = {
            "PATH": self.shim_env()["PATH"],
            "LANG": "C.UTF-8",
            "SANDBOX_ROOT": str(self.root),
            "SANDBOX_OWNER_PID": str(self.owner_pid),
            "TMPDIR": str(self.run_dir / "tmp"),  # the instance's /tmp: a killed script's leftovers stay
            "AWS_CONFIG_FILE": str(self.aws_config_dir / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.aws_config_dir / "credentials"),
            "AWS_ENDPOINT_URL": endpoint,
            "S3_ENDPOINT_URL": endpoint,  # s5cmd's name for it
        }
        env.update(self.extra_env)
        return env

    def script_env(self, region: str, command_id: str = "") -> dict[str, str]:
        """What a document's script sees: the agent's environment plus what the agent adds
        (agent/executers/executers.go prepareEnvironment, agent/plugins/runscript/runscript.go)."""
        env = self.agent_environment()
        if command_id:
            env["SSM_COMMAND_ID"] = command_id
        env.update(
            {
                "AWS_SSM_INSTANCE_ID": self.instance_id,
                "AWS_SSM_REGION_NAME": region,
                "AWS_SSM_PLATFORM_NAME": PLATFORM_NAME,
                "AWS_SSM_PLATFORM_VERSION": PLATFORM_VERSION,
            }
        )
        return env

    @contextlib.contextmanager
    def acting_as_instance(self) -> Iterator[None]:
        """The calls this thread makes meanwhile are the instance role's (local/iam.py)."""
        if self.instance_role_arn is None:
            yield
            return
        from local import iam

        with iam.acting_as(self.instance_role_arn, self.instance_id):
            yield

    def on_host(self, argv: list[str]) -> list[str]:
        """`argv` as this instance runs it: on its own host when it has one (own_host.py)."""
        return self.own_host.wrap(argv) if self.own_host is not None else argv

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.on_host([str(SHIMS / "systemctl"), *args]),
            env=self.shim_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"systemctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    # ------------------------------------------------------------------ fake Flux and the GPU

    def install_fake_flux(
        self,
        port: int,
        *,
        unit: str = "flux-api.service",
        gpu_mib: int = 4096,
        gpu_linger_s: float | None = 0.0,
        ram_mib: int = 0,
        start: bool = True,
    ) -> None:
        """Install (and start) a small HTTP server on ``port`` as ``unit``, holding ``gpu_mib`` of GPU."""
        folder = self.root / "opt" / "flux"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FAKE_FLUX, folder / "server.py")
        (self.unit_dir / unit).write_text(
            "[Unit]\n"
            "Description=Flux image generation API (sandbox fake)\n"
            "After=network-online.target\n\n"
            "[Service]\n"
            "Type=simple\n"
            f"User={self.service_user}\n"
            f"WorkingDirectory={folder}\n"
            f"ExecStart={sys.executable} {folder / 'server.py'} --port {port} --ram-mib {ram_mib}\n"
            "Restart=always\n"
            "RestartSec=2\n\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n"
        )
        self.set_gpu_claim(unit, gpu_mib, linger_s=gpu_linger_s)
        self.systemctl("daemon-reload")
        self.systemctl("enable", unit)
        if start:
            self.systemctl("start", unit)
            wait_for_port(port, timeout_s=15)

    def set_gpu_claim(self, unit: str, mib: int, *, linger_s: float | None = 0.0) -> None:
        """While ``unit`` runs, nvidia-smi lists its main PID holding ``mib`` MiB; after it stops, for
        ``linger_s`` more seconds (None: forever, as a driver that never gives memory back)."""
        config = read_gpu_config(self.root)
        claims = dict(config.get("claims", {}))
        claims[unit] = {"mib": int(mib), "linger_s": linger_s}
        self._write_gpu_config(**{**config, "claims": claims})

    def _write_gpu_config(self, **config: Any) -> None:
        path = self.run_dir / "gpu.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ observing

    def processes(self) -> dict[str, int]:
        """Units that run now: unit name -> MainPID."""
        running = {}
        for unit in known_units(self.root):
            pid = main_pid(self.root, unit)
            if pid:
                running[unit] = pid
        return running

    def unit_state(self, unit: str) -> dict[str, str]:
        return properties(self.root, unit)

    def journal(self, unit: str) -> str:
        try:
            return log_path(self.root, unit).read_text(errors="replace")
        except OSError:
            return ""

    def tree_files(self) -> dict[str, str]:
        """Every file and link of the instance (``run/`` and the SSM agent's own state aside):
        relative path -> sha256 of its bytes."""
        files: dict[str, str] = {}
        agent_state = self.root / "var" / "lib" / "amazon" / "ssm"
        for folder, dirs, names in os.walk(self.root):
            here = Path(folder)
            if here == self.root:
                dirs[:] = [d for d in dirs if d != "run"]
            dirs[:] = [d for d in dirs if here / d != agent_state]
            for name in sorted(names) + [d for d in dirs if (here / d).is_symlink()]:
                path = here / name
                rel = str(path.relative_to(self.root))
                if path.is_symlink():
                    files[rel] = "link:" + os.readlink(path)
                elif path.is_file():
                    files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        return dict(sorted(files.items()))

    def tree_digest(self) -> str:
        """One hash of every file's path and bytes: equal digests mean nothing on disk changed."""
        digest = hashlib.sha256()
        for rel, content in self.tree_files().items():
            digest.update(f"{rel}\0{content}\n".encode())
        return digest.hexdigest()

    # ------------------------------------------------------------------ connectivity

    def go_offline(self) -> None:
        """The agent stops answering: new commands stay Pending, then DeliveryTimedOut."""
        self.online = False

    def go_online(self) -> None:
        self.online = True
        self.last_ping = dt.datetime.now(dt.UTC)

    def power_off(self) -> None:
        """The instance stops: the agent goes silent and every unit's processes (and the scripts
        of commands in flight) die with the machine; what is on disk stays."""
        self.powered = False
        self.power_generation += 1
        for run in agent.runs_for(self.instance_id):
            agent.kill_processes(run)
        for unit in known_units(self.root):
            kill_unit(self.root, unit)

    def boot(self) -> None:
        """The instance has booted: systemd starts the enabled units, then the agent comes Online."""
        generation = self.power_generation
        for unit in self.enabled_units():
            self.systemctl("start", unit, check=False)
        time.sleep(self.agent_start_s)
        if self.power_generation == generation:
            self.powered = True
            self.last_ping = dt.datetime.now(dt.UTC)

    def enabled_units(self) -> list[str]:
        """Units with a WantedBy link: what systemd starts at boot."""
        return [u for u in known_units(self.root) if self.unit_state(u).get("UnitFileState") == "enabled"]

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Forget the instance and kill every process the sandbox started (units, scripts)."""
        agent.unregister(self.instance_id)
        for unit in known_units(self.root):
            kill_unit(self.root, unit)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def declared_parameters(document: str) -> set[str]:
    """Parameter names of one of the project's documents (none for a document not in ssm_documents/)."""
    path = DOCUMENTS / f"{document}.yaml"
    if not path.is_file():
        return set()
    content = yaml.safe_load(path.read_text())
    return set((content.get("parameters") or {}).keys())


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


# Ports handed out by free_port in this process: two calls never give the same one.
_HANDED_OUT: set[int] = set()
LOW_PORTS = range(20000, 32000)


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port a server can bind now, below the kernel's ephemeral range (as the instance's 8000 and
    8001 are): a port the OS picks for a bind to 0 is also one it hands out as the source port of
    outgoing connections (the tests' own HTTP clients), which can take it before the server binds."""
    candidates = [p for p in LOW_PORTS if p < _ephemeral_floor() and p not in _HANDED_OUT]
    for port in random.sample(candidates, len(candidates)):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {LOW_PORTS} below the ephemeral range")
