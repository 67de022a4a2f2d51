"""How long the state machine takes to notice that an instance step finished.

For a deploy of the tiny model in the local emulator, each instance step's lag is the time its
completion was read (the completer run by SSM's status-change event, or the step's own safety
net) minus the time the command itself ended (SSM's ExecutionEndDateTime). Printed for the
local settings and for the AWS settings (the stack's defaults: 5 s Again waits, a 900 s safety
net), with the ratio of the whole execution's time to the sum of the commands' own run times.

It also counts, in a real execution's history, the events one safety-net round costs (an
Await that heard no event: collect-resources with its events dropped) and the events of a
command's end, and computes from them the history of a step that runs one hour on the AWS
settings.

Goals on the AWS settings: execution / commands <= 1.3, worst per-step lag <= 1 s, a one-hour
step <= 50 history events.

    .venv/bin/python -m bench.orchestration_lag                   # both settings, one child each
    .venv/bin/python -m bench.orchestration_lag --settings aws    # one setting (JSON out)
"""

from __future__ import annotations

import argparse
import json
import math
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
SETTINGS: dict[str, dict[str, Any]] = {
    "local": {"poll_interval_seconds": 1, "safety_net_seconds": 5},
    "aws": {"poll_interval_seconds": 5, "safety_net_seconds": 900},  # the stack's defaults
}
TITLES = {"local": "local (1 s waits, 5 s safety net)", "aws": "AWS (the stack's defaults: 5 s, 900 s)"}
ONE_HOUR = 3600
GOALS = {"ratio": 1.3, "lag_s": 1.0, "hour_events": 50}


def _round_events(history: list[dict[str, Any]], label: str) -> dict[str, int]:
    """Events of `label`'s fragment in a real history: its send, each safety-net round (Await
    timed out, Rearm), the round that ended the command, Finished? and Result."""
    names = [
        (e.get("stateEnteredEventDetails") or e.get("stateExitedEventDetails") or {}).get("name")
        for e in history
    ]
    types = [e["type"] for e in history]
    entered = [i for i, n in enumerate(names) if n is not None and types[i].endswith("StateEntered")]

    def first(name: str, after: int = -1) -> int:
        return next(i for i in entered if names[i] == name and i > after)

    send = first(label)
    awaits = [i for i in entered if names[i] == f"{label}.Await"]
    finished = first(f"{label}.Finished?", awaits[-1])
    result = first(f"{label}.Result", finished)
    after_result = next((i for i in entered if i > result), len(history))
    if len(awaits) < 2:
        raise RuntimeError(f"{label} ran no safety-net round: {types[send:after_result]}")
    return {
        "send": awaits[0] - send,
        "safety_net_round": awaits[1] - awaits[0],
        "ending_round": finished - awaits[-1],
        "finished_and_result": after_result - finished,
    }


def one_hour_command() -> Any:
    """A sync command sent at 0 whose budget is one hour: both fragments' rounds are counted on it."""
    from asoba_deploy.core.commands import CommandRef

    return CommandRef(
        step="sync",
        document="d",
        command_id="c",
        instance_id="i",
        sent_at=0,
        first_sent_at=0,
        deadline=ONE_HOUR,
    )


def one_hour_step_events(counts: dict[str, int], safety_net: int) -> dict[str, Any]:
    """The history of a step whose command runs one hour (budget one hour: the sync's default)
    and whose end event arrives: its rounds are the Await timeouts the send computes."""
    from asoba_deploy.core.commands import await_timeout

    ref = one_hour_command()
    round_seconds = await_timeout(ref, now=0, safety_net=safety_net)
    timed_out = max(0, math.ceil(ONE_HOUR / round_seconds) - 1)
    events = (
        counts["send"]
        + timed_out * counts["safety_net_round"]
        + counts["ending_round"]
        + counts["finished_and_result"]
    )
    return {"round_seconds": round_seconds, "safety_net_rounds": timed_out, "events": events}


def polled_hour_events(poll_seconds: int = 5) -> int:
    """The same step under the polling fragment it replaces (send, then Wait -> Poll -> Finished?
    rounds of 9 events at its back-off, then Result): for comparison."""
    from asoba_deploy.core.commands import next_wait
    from local.limits import poll_rounds

    ref = one_hour_command()
    rounds = poll_rounds(ONE_HOUR, lambda elapsed: next_wait(ref, now=elapsed, interval=poll_seconds))
    return 5 + 9 * rounds + 2


def measure(name: str) -> dict[str, Any]:
    """One environment, one deploy (the ledger record's per-step timings); with the local
    settings also one dry run whose collect-resources events are lost (the round counts)."""
    import logging

    logging.disable(logging.WARNING)
    from local import environment as env
    from local import events
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
        context = env.stack_context(instance_id, bucket, sandbox, ports) | SETTINGS[name]
        stack = env.deploy_stack(cloud, context, work / "cdk.out")
        from local.bucket import upload_model

        upload_model(cloud.client("s3"), bucket, "tiny-llama", build_tiny_model(work / "tiny-llama"))
        sfn = cloud.client("stepfunctions")
        started = time.monotonic()
        result = run_execution(sfn, stack.state_machine_arn, {"model": "tiny-llama"}, timeout=900)
        wall = time.monotonic() - started
        if result.status != "SUCCEEDED":
            raise RuntimeError(f"deploy {result.status}: {result.error}: {result.cause}")
        steps = result.output["steps"]
        command_total = sum(s["command_seconds"] or 0 for s in steps.values())
        report: dict[str, Any] = {
            "settings": name,
            **SETTINGS[name],
            "execution_seconds": round(wall, 2),
            "commands_seconds": round(command_total, 2),
            "ratio_execution_over_commands": round(wall / command_total, 2) if command_total else None,
            "history_events": len(result.history),
            "steps": {
                key: {"lag_s": s["lag_seconds"], "command_s": s["command_seconds"], "attempts": s["attempts"]}
                for key, s in steps.items()
            },
        }
        if name == "local":

            def collect_event(event: dict[str, Any]) -> bool:
                return str(event.get("detail", {}).get("document-name", "")).endswith("-collect-resources")

            with events.drop(collect_event):
                lost = run_execution(sfn, stack.state_machine_arn, {"model": "tiny-llama", "dry_run": True})
            if lost.status != "SUCCEEDED":
                raise RuntimeError(f"dry run with lost events {lost.status}: {lost.error}: {lost.cause}")
            report["round_events"] = _round_events(lost.history, "CollectResources")
        return report
    finally:
        if sandbox is not None:
            sandbox.close()
        cloud.stop()


def _child(name: str) -> dict[str, Any]:
    # one process per setting: moto's backends are process-wide
    run = subprocess.run(
        [sys.executable, "-m", "bench.orchestration_lag", "--settings", name],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", choices=sorted(SETTINGS), help="measure one setting (JSON out)")
    args = parser.parse_args()
    if args.settings:
        print(json.dumps(measure(args.settings)))
        return 0
    reports = {name: _child(name) for name in SETTINGS}
    ok = True
    for name, report in reports.items():
        print(
            f"\n{TITLES[name]}: execution {report['execution_seconds']} s, commands "
            f"{report['commands_seconds']} s, ratio {report['ratio_execution_over_commands']}, "
            f"{report['history_events']} history events"
        )
        print(f"  {'step':<14} {'command s':>10} {'lag s':>8} {'attempts':>9}")
        for key, step in report["steps"].items():
            print(f"  {key:<14} {step['command_s']!s:>10} {step['lag_s']!s:>8} {step['attempts']:>9}")
        worst = max((s["lag_s"] or 0) for s in report["steps"].values())
        print(f"  worst lag {worst:.2f} s")
        if name == "aws":
            ratio = report["ratio_execution_over_commands"] or math.inf
            print(
                f"  goal: ratio <= {GOALS['ratio']} ({ratio}), worst lag <= {GOALS['lag_s']} s ({worst:.2f})"
            )
            ok = ok and ratio <= GOALS["ratio"] and worst <= GOALS["lag_s"]
    counts = reports["local"]["round_events"]
    hour = one_hour_step_events(counts, SETTINGS["aws"]["safety_net_seconds"])
    print(
        f"\nhistory events counted in a real execution (collect-resources, its events lost): send "
        f"{counts['send']}, one safety-net round {counts['safety_net_round']}, the ending round "
        f"{counts['ending_round']}, Finished? + Result {counts['finished_and_result']}"
    )
    print(
        f"a step that runs one hour on the AWS settings: {hour['safety_net_rounds']} safety-net rounds of "
        f"{hour['round_seconds']} s -> {hour['events']} history events (goal <= {GOALS['hour_events']}; "
        f"polled at 5 s with its back-off it was {polled_hour_events()})"
    )
    ok = ok and hour["events"] <= GOALS["hour_events"]
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
