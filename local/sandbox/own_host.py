"""A sandbox on a host of its own, for a fleet of sandboxes on this one machine.

Instances of a fleet share the stack's settings: the same roots (/opt/models, ...) and ports
(Flux's, the runtime's). Real instances keep them apart by being different hosts; sandboxes on
one machine would write into one another's folders and bind one another's ports. An `OwnHost`
gives its sandbox what a host of its own would:

- its own network: a persistent network namespace (`unshare --net=<file>`), loopback up, in which
  every script, every unit it starts and the sandbox's own systemctl calls run; the local cloud's
  port is reachable there through a forwarder (TCP in the namespace -> a Unix socket -> TCP on
  this machine), as the real instance reaches the AWS endpoints;
- its own view of the roots: each script runs in a private mount namespace where the stack's
  root folder (`view`, the path the stack's configuration names) is this sandbox's own root.

Needs root (the local cloud's machines run as root); `available()` says whether it works here.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import time
from pathlib import Path

FORWARD = Path(__file__).with_name("forward.py")


def available() -> bool:
    try:
        done = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class OwnHost:
    def __init__(self, root: Path, view: Path, cloud_port: int) -> None:
        self.root, self.view, self.cloud_port = Path(root), Path(view), cloud_port
        self.view.mkdir(parents=True, exist_ok=True)
        self.netns = self.root / "run" / "sandbox" / "netns"
        self.netns.parent.mkdir(parents=True, exist_ok=True)
        # a namespace left mounted here by an earlier run that did not close is released first
        subprocess.run(["umount", str(self.netns)], capture_output=True, timeout=10, check=False)
        self.netns.touch()
        self.socket = self.root / "run" / "sandbox" / "cloud.sock"
        self._forwarders: list[subprocess.Popen[bytes]] = []
        subprocess.run(["unshare", f"--net={self.netns}", "true"], check=True, timeout=10)
        subprocess.run(
            ["nsenter", f"--net={self.netns}", "ip", "link", "set", "lo", "up"], check=True, timeout=10
        )
        # this machine's side first (it listens on the socket), then the namespace's side
        self._forwarders.append(
            subprocess.Popen([sys.executable, str(FORWARD), "unix-to-tcp", str(self.socket), str(cloud_port)])
        )
        self._wait_for(lambda: self.socket.exists(), "the cloud socket")
        self._forwarders.append(
            subprocess.Popen(
                [
                    "nsenter",
                    f"--net={self.netns}",
                    sys.executable,
                    str(FORWARD),
                    "tcp-to-unix",
                    str(cloud_port),
                    str(self.socket),
                ]
            )
        )
        self._wait_for(lambda: self.port_open(cloud_port), "the cloud's port in the namespace")

    @staticmethod
    def _wait_for(ready: object, what: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise TimeoutError(f"{what} not ready within {timeout_s} s")

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run on this host: in its network, with the stack's root folder as its own root.
        nsenter and unshare exec: the process (and its group) is argv's own."""
        bind = f"mount --bind {shlex.quote(str(self.root))} {shlex.quote(str(self.view))}"
        return [
            "nsenter",
            f"--net={self.netns}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'{bind} && exec "$@"',
            "sh",
            *argv,
        ]

    def local_path(self, path: Path) -> Path:
        """Where a path of this host's view lies on this machine (for the agent's own writes)."""
        try:
            return self.root / path.relative_to(self.view)
        except ValueError:
            return path

    def port_open(self, port: int) -> bool:
        probe = (
            "import socket,sys\n"
            "s=socket.socket();s.settimeout(1)\n"
            f"sys.exit(s.connect_ex(('127.0.0.1',{int(port)})))\n"
        )
        done = subprocess.run(
            ["nsenter", f"--net={self.netns}", sys.executable, "-c", probe], capture_output=True, timeout=10
        )
        return done.returncode == 0

    def wait_for_port(self, port: int, timeout_s: float = 15) -> None:
        self._wait_for(lambda: self.port_open(port), f"port {port}", timeout_s)

    def get(self, url: str, timeout_s: float = 5) -> str:
        """GET `url` from inside this host's network (what the test sees of its runtime)."""
        fetch = (
            "import sys,urllib.request\n"
            f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout={timeout_s}).read().decode())\n"
        )
        done = subprocess.run(
            ["nsenter", f"--net={self.netns}", sys.executable, "-c", fetch],
            capture_output=True,
            text=True,
            timeout=timeout_s + 10,
            check=True,
        )
        return done.stdout

    def close(self) -> None:
        for process in reversed(self._forwarders):
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        subprocess.run(["umount", str(self.netns)], capture_output=True, timeout=10, check=False)
        self.socket.unlink(missing_ok=True)
