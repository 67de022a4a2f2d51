"""What `deploy-model status` says of an instance's power (cli/power.py, cli/render.py)."""

from __future__ import annotations

from asoba_deploy.cli.power import Power, describe
from asoba_deploy.cli.render import InstanceStatus, status_table


def test_running_idle_and_stopped_read_as_such() -> None:
    assert describe(Power("running", None)) == "running"
    assert describe(Power("running", 42.0)) == "running, no request for 42 s"
    assert describe(Power("running", 720.0)) == "running, no request for 12 min"
    assert describe(Power("running", 3 * 3600.0)) == "running, no request for 3.0 h"
    assert describe(Power("stopped", None)) == "stopped"
    assert describe(Power(None, None)) == "state unknown"


def test_the_status_table_says_each_instances_power() -> None:
    table = status_table(
        [
            InstanceStatus("i-0123456789abcdef0", None, None, None, None, power="stopped"),
            InstanceStatus(
                "i-0fedcba9876543210", None, None, None, None, power="running, no request for 5 s"
            ),
        ]
    )
    lines = table.splitlines()
    assert "i-0123456789abcdef0: stopped" in lines
    assert "i-0fedcba9876543210: running, no request for 5 s" in lines
