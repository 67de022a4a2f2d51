"""Re-record the executions tests/unit/test_cli.py replays (run when the state machine changes).

    .venv/bin/python -m tests.unit.cli_recordings.record      (from the repository root)

Brings up the local cloud (local/environment.py), runs a dry run, a deploy and three failures
(unknown model, a plan that does not fit, a runtime that cannot load and is rolled back), and
writes each history trimmed to what the CLI reads.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from local.environment import LocalEnvironment
from local.executions import run_execution
from local.models import build_tiny_model

HERE = Path(__file__).resolve().parent
PLUMBING_OUTPUTS = ("RecordDeployment", "ReleaseLock", "RecordFailure", "ReleaseLockAfterFailure")


def _slim(state: dict[str, Any]) -> dict[str, Any]:
    state = dict(state)
    if isinstance(state.get("plan"), dict):
        state["plan"] = dict(state["plan"], files=state["plan"]["files"][:2])
    if isinstance(state.get("command"), dict):
        state["command"] = {k: v for k, v in state["command"].items() if not k.endswith("_tail")}
    if isinstance(state.get("steps"), dict):
        state["steps"] = {
            key: {k: v for k, v in step.items() if not k.endswith("_tail")}
            for key, step in state["steps"].items()
        }
    return state


def trim(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the events; drop inputs, and outputs the CLI never reads."""
    names = [(e.get("stateExitedEventDetails") or {}).get("name", "") for e in history]
    instance_steps = {name.removesuffix(".Result") for name in names if name.endswith(".Result")}
    kept = []
    for original in history:
        event = dict(original)
        stamp = event["timestamp"]
        event["timestamp"] = stamp.isoformat() if isinstance(stamp, datetime) else stamp
        event.pop("lambdaFunctionScheduledEventDetails", None)
        event.pop("lambdaFunctionSucceededEventDetails", None)
        if "stateEnteredEventDetails" in event:
            event["stateEnteredEventDetails"] = {"name": event["stateEnteredEventDetails"]["name"]}
        details = event.get("stateExitedEventDetails")
        if details:
            name = details["name"]
            plain_task = event["type"] == "TaskStateExited" and "." not in name
            wanted = (
                plain_task and name not in instance_steps and name not in PLUMBING_OUTPUTS
            ) or name.endswith((".Result", ".Poll"))
            trimmed: dict[str, Any] = {"name": name}
            if wanted:
                output = json.loads(details.get("output") or "null")
                if isinstance(output, dict):
                    output = _slim(output)
                    if name.endswith(".Poll"):
                        output = {"command": output.get("command")}
                trimmed["output"] = json.dumps(output)
            event["stateExitedEventDetails"] = trimmed
        kept.append(event)
    return kept


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="cli-recordings-"))
    env = LocalEnvironment.start(workdir)
    try:
        tiny = build_tiny_model(workdir / "models" / "tiny-llama")
        env.upload_model("tiny-llama", tiny)
        broken = workdir / "models" / "broken-llama"
        shutil.copytree(tiny, broken)
        config = json.loads((broken / "config.json").read_text())
        config["hidden_act"] = "no_such_activation"  # the planner does not read it; loading fails
        (broken / "config.json").write_text(json.dumps(config))
        env.upload_model("broken-llama", broken)
        runs = {
            "dry_run": {"model": "tiny-llama", "dry_run": True},
            "deploy": {"model": "tiny-llama"},
            "model_not_found": {"model": "no-such-model"},
            "insufficient": {"model": "tiny-llama", "port": env.ports.flux, "allow_stop_flux": False},
            "rolled_back": {"model": "broken-llama"},
        }
        sfn = env.cloud.client("stepfunctions")
        for name, payload in runs.items():
            result = run_execution(sfn, env.stack.state_machine_arn, payload, timeout=600, name=f"rec-{name}")
            print(name, result.status, result.error, file=sys.__stderr__)
            body = {
                "status": result.status,
                "error": result.error,
                "cause": result.cause,
                "output": result.output,
                "events": trim(result.history),
            }
            (HERE / f"{name}.json").write_text(json.dumps(body, indent=1, default=str) + "\n")
    finally:
        env.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
