"""The sandbox's systemctl, journalctl, sudo and nvidia-smi stand-ins."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.sandbox import Sandbox, free_port, port_open, wait_for_port
from local.sandbox.sandbox import SHIMS


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox(tmp_path / "instance", "i-0123456789abcdef0", gpu=True) as box:
        yield box


def run(sandbox: Sandbox, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), env=sandbox.shim_env(), capture_output=True, text=True, timeout=60, check=False
    )


def write_unit(sandbox: Sandbox, name: str, exec_start: str, *extra: str) -> None:
    lines = [
        "[Unit]",
        f"Description={name} test",
        "",
        "[Service]",
        f"ExecStart={exec_start}",
        *extra,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    (sandbox.unit_dir / name).write_text("\n".join(lines))


def test_a_unit_runs_as_a_real_process_with_its_environment(sandbox: Sandbox, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text('# comment\nGREETING=hello\nQUOTED="a b"\n')
    write_unit(
        sandbox,
        "demo.service",
        "/bin/sh -c 'echo $GREETING $QUOTED $EXTRA; exec sleep 60'",
        f"EnvironmentFile={env_file}",
        "Environment=EXTRA=x",
    )
    assert run(sandbox, "systemctl", "start", "demo").returncode == 0
    assert run(sandbox, "systemctl", "is-active", "demo.service").stdout == "active\n"
    pid = int(run(sandbox, "systemctl", "show", "demo.service", "--property=MainPID", "--value").stdout)
    assert Path(f"/proc/{pid}").exists()
    assert sandbox.processes() == {"demo.service": pid}
    time.sleep(0.2)
    assert "hello a b x" in run(sandbox, "journalctl", "-u", "demo.service", "--no-pager").stdout
    show = run(sandbox, "systemctl", "show", "demo.service", "-p", "ActiveState", "-p", "SubState").stdout
    assert show.splitlines() == ["ActiveState=active", "SubState=running"]
    assert run(sandbox, "systemctl", "stop", "demo.service").returncode == 0
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    result = run(sandbox, "systemctl", "is-active", "demo.service")
    assert (result.stdout, result.returncode) == ("inactive\n", 3)
    assert sandbox.processes() == {}


def test_enable_disable_and_unknown_units(sandbox: Sandbox) -> None:
    write_unit(sandbox, "demo.service", "/bin/sleep 60")
    assert run(sandbox, "systemctl", "is-enabled", "demo.service").stdout == "disabled\n"
    assert run(sandbox, "systemctl", "enable", "demo.service").returncode == 0
    link = sandbox.unit_dir / "multi-user.target.wants" / "demo.service"
    assert link.is_symlink()
    assert run(sandbox, "systemctl", "is-enabled", "demo.service").stdout == "enabled\n"
    assert run(sandbox, "systemctl", "disable", "demo.service").returncode == 0
    assert not link.exists()
    missing = run(sandbox, "systemctl", "start", "nothing.service")
    assert (missing.returncode, missing.stderr.strip()) == (
        5,
        "Failed to start nothing.service: Unit nothing.service not found.",
    )
    assert run(sandbox, "systemctl", "stop", "nothing.service").returncode == 5
    show = run(sandbox, "systemctl", "show", "nothing.service", "-p", "LoadState", "-p", "ActiveState").stdout
    assert show.splitlines() == ["LoadState=not-found", "ActiveState=inactive"]
    assert run(sandbox, "systemctl", "frobnicate", "demo.service").returncode == 1


def test_restart_always_brings_a_dead_process_back(sandbox: Sandbox) -> None:
    write_unit(sandbox, "crashy.service", "/bin/sleep 60", "Restart=always", "RestartSec=0.3")
    run(sandbox, "systemctl", "start", "crashy.service")
    first = sandbox.processes()["crashy.service"]
    os.kill(first, 9)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sandbox.processes().get("crashy.service", first) == first:
        time.sleep(0.05)
    second = sandbox.processes()["crashy.service"]
    assert second != first
    assert sandbox.unit_state("crashy.service")["NRestarts"] == "1"


def test_a_process_that_exits_fails_the_unit(sandbox: Sandbox) -> None:
    write_unit(sandbox, "oneshot.service", "/bin/sh -c 'exit 7'")
    run(sandbox, "systemctl", "start", "oneshot.service")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sandbox.unit_state("oneshot.service")["ActiveState"] != "failed":
        time.sleep(0.05)
    state = sandbox.unit_state("oneshot.service")
    assert (state["ActiveState"], state["ExecMainStatus"]) == ("failed", "7")
    status = run(sandbox, "systemctl", "status", "oneshot.service")
    assert status.returncode == 3 and "status=7" in status.stdout


def test_daemon_reload_decides_which_unit_file_counts(sandbox: Sandbox) -> None:
    port_a, port_b = free_port(), free_port()
    server = f"{SHIMS.parent / 'fake_flux.py'}"
    write_unit(sandbox, "web.service", f"/usr/bin/env python3 {server} --port {port_a}")
    run(sandbox, "systemctl", "daemon-reload")
    write_unit(sandbox, "web.service", f"/usr/bin/env python3 {server} --port {port_b}")
    run(sandbox, "systemctl", "start", "web.service")  # systemd still has the old file
    wait_for_port(port_a)
    run(sandbox, "systemctl", "stop", "web.service")
    run(sandbox, "systemctl", "daemon-reload")
    run(sandbox, "systemctl", "restart", "web.service")
    wait_for_port(port_b)
    assert not port_open(port_a)


def test_journalctl_tails(sandbox: Sandbox) -> None:
    write_unit(
        sandbox, "talk.service", "/bin/sh -c 'for i in 1 2 3 4 5; do echo line$i; done; exec sleep 60'"
    )
    run(sandbox, "systemctl", "start", "talk.service")
    time.sleep(0.3)
    everything = run(sandbox, "journalctl", "-u", "talk.service", "--no-pager").stdout.splitlines()
    assert [line for line in everything if line.startswith("line")] == [f"line{i}" for i in range(1, 6)]
    assert len(run(sandbox, "journalctl", "-u", "talk", "-n", "3").stdout.splitlines()) == 3
    assert run(sandbox, "journalctl", "-u", "silent.service").stdout == "-- No entries --\n"


def test_sudo_runs_the_command(sandbox: Sandbox) -> None:
    result = run(sandbox, "sudo", "-n", "-u", "ubuntu", "echo", "as asked")
    assert (result.returncode, result.stdout) == (0, "as asked\n")
    assert run(sandbox, "sudo").returncode == 1


def test_nvidia_smi_answers_the_real_query_forms(sandbox: Sandbox) -> None:
    write_unit(sandbox, "gpu.service", "/bin/sleep 60")
    sandbox.set_gpu_claim("gpu.service", 3000, linger_s=None)
    query = ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.used", "--format=csv,noheader,nounits"]
    apps = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    assert run(sandbox, *query).stdout == "0, NVIDIA A10G, 23028, 0\n"
    assert run(sandbox, *apps).stdout == ""
    run(sandbox, "systemctl", "start", "gpu.service")
    pid = sandbox.processes()["gpu.service"]
    assert run(sandbox, *query).stdout == "0, NVIDIA A10G, 23028, 3000\n"
    assert run(sandbox, *apps).stdout == f"{pid}, 3000\n"
    with_units = run(sandbox, "nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv").stdout
    assert with_units == f"pid, used_memory [MiB]\n{pid}, 3000 MiB\n"
    # A claim that lingers forever outlives the process, as a driver that never frees it.
    run(sandbox, "systemctl", "stop", "gpu.service")
    assert run(sandbox, *apps).stdout == f"{pid}, 3000\n"
    bad = run(sandbox, "nvidia-smi", "--query-gpu=bogus", "--format=csv")
    assert bad.returncode == 2


def test_no_gpu_means_no_nvidia_smi(tmp_path: Path) -> None:
    with Sandbox(tmp_path / "cpu", "i-0123456789abcdef1", gpu=False) as cpu:
        result = subprocess.run(
            ["sh", "-c", "command -v nvidia-smi"],
            env=cpu.shim_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0


def test_close_kills_everything(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "instance", "i-0123456789abcdef2")
    write_unit(box, "a.service", "/bin/sleep 60", "Restart=always")
    run(box, "systemctl", "start", "a.service")
    pid = box.processes()["a.service"]
    box.close()
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_reload_runs_exec_reload_on_the_main_process_as_systemd_does(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Given a unit that counts the SIGHUPs it gets, with ExecReload sending one to $MAINPID
    count = tmp_path / "hups"
    script = tmp_path / "hup.py"
    script.write_text(
        "import pathlib, signal, sys, time\n"
        f"path = pathlib.Path({str(count)!r})\n"
        "signal.signal(signal.SIGHUP, lambda *_: path.write_text(str(int(path.read_text() or 0) + 1)))\n"
        "path.write_text('0')\n"
        "while True:\n    time.sleep(0.05)\n"
    )
    write_unit(sandbox, "hup.service", f"/usr/bin/env python3 {script}", "ExecReload=/bin/kill -HUP $MAINPID")
    write_unit(sandbox, "plain.service", "/bin/sleep 60")
    # reloading an inactive unit is refused, as systemd refuses it
    refused = run(sandbox, "systemctl", "reload", "hup.service")
    assert refused.returncode == 1 and "cannot be reloaded because it is inactive" in refused.stderr
    assert run(sandbox, "systemctl", "start", "hup.service").returncode == 0
    deadline = time.monotonic() + 10
    while not (count.exists() and count.read_text() == "0") and time.monotonic() < deadline:
        time.sleep(0.05)  # its handler is installed
    pid = sandbox.processes()["hup.service"]

    # When it is reloaded twice
    assert run(sandbox, "systemctl", "reload", "hup.service").returncode == 0
    assert run(sandbox, "systemctl", "reload", "hup.service").returncode == 0

    # Then its main process got two SIGHUPs and kept running
    while count.read_text() != "2" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count.read_text() == "2"
    assert sandbox.processes()["hup.service"] == pid
    # And a unit without ExecReload cannot be reloaded
    assert run(sandbox, "systemctl", "start", "plain.service").returncode == 0
    plain = run(sandbox, "systemctl", "reload", "plain.service")
    assert plain.returncode == 1 and "Job type reload is not applicable" in plain.stderr
