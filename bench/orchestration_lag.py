"""How long the state machine takes to notice that an instance step finished.

For a deploy of the tiny model in the local emulator, each polled step's lag is the time
the state machine's poll saw the command end minus the time the command itself ended
(SSM's ExecutionEndDateTime). Printed for the local settings (1 s polls) and for the AWS
settings (the stack's default 5 s polls), with the ratio of the whole execution's time
to the sum of the commands' own run times. Goal: under 5 s of lag per step on AWS settings.

    .venv/bin/python -m bench.orchestration_lag            # both settings, one child each
    .venv/bin/python -m bench.orchestration_lag --poll 5   # one setting
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SETTINGS = {1: "local (1 s polls)", 5: "AWS (5 s polls, the stack's default)"}


def measure(poll_seconds: int) -> dict[str, Any]:
    """One environment, one deploy; the ledger record's per-step timings."""
    import logging

    logging.disable(logging.WARNING)
    from local import environment as env
    from local.executions import run_execution
    from local.models import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="orchestration-lag-"))
    cloud = env.start_cloud()
    sandbox = None
    try:
        instance_id = env.launch_instance(cloud)
        bucket = env.model_bucket(cloud)
        ports = env.Ports(flux=env.preferred_port(None), coexist=env.preferred_port(None))
        sandbox = env.start_sandbox(work / "instance", cloud, instance_id, ports.flux)
        context = env.stack_context(instance_id, bucket, sandbox, ports) | {
            "poll_interval_seconds": poll_seconds
        }
        stack = env.deploy_stack(cloud, context, work / "cdk.out")
        from local.bucket import upload_model

        upload_model(cloud.client("s3"), bucket, "tiny-llama", build_tiny_model(work / "tiny-llama"))
        started = time.monotonic()
        result = run_execution(
            cloud.client("stepfunctions"), stack.state_machine_arn, {"model": "tiny-llama"}, timeout=900
        )
        wall = time.monotonic() - started
        if result.status != "SUCCEEDED":
            raise RuntimeError(f"deploy {result.status}: {result.error}: {result.cause}")
        steps = result.output["steps"]
        command_total = sum(s["command_seconds"] or 0 for s in steps.values())
        return {
            "poll_seconds": poll_seconds,
            "execution_seconds": round(wall, 2),
            "commands_seconds": round(command_total, 2),
            "ratio_execution_over_commands": round(wall / command_total, 2) if command_total else None,
            "steps": {
                key: {"lag_s": s["lag_seconds"], "command_s": s["command_seconds"], "attempts": s["attempts"]}
                for key, s in steps.items()
            },
        }
    finally:
        if sandbox is not None:
            sandbox.close()
        cloud.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--poll", type=int, choices=sorted(SETTINGS), help="measure one setting (JSON out)")
    args = parser.parse_args()
    if args.poll:
        print(json.dumps(measure(args.poll)))
        return 0
    ok = True
    for poll in sorted(SETTINGS):
        # one process per setting: moto's backends are process-wide
        run = subprocess.run(
            [sys.executable, __file__, "--poll", str(poll)], capture_output=True, text=True, check=False
        )
        if run.returncode != 0:
            print(run.stderr[-3000:])
            return 1
        report = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"\n{SETTINGS[poll]}: execution {report['execution_seconds']} s, commands "
            f"{report['commands_seconds']} s, ratio {report['ratio_execution_over_commands']}"
        )
        print(f"  {'step':<10} {'command s':>10} {'lag s':>8} {'attempts':>9}")
        for key, step in report["steps"].items():
            print(f"  {key:<10} {step['command_s']!s:>10} {step['lag_s']!s:>8} {step['attempts']:>9}")
        worst = max((s["lag_s"] or 0) for s in report["steps"].values())
        print(f"  worst lag {worst:.2f} s (goal < 5 s per step on AWS settings)")
        ok = ok and (poll != 5 or worst < 5)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
