"""A LoRA adapter deployed through the synthesized state machine: its base, another bucket folder,
is synced by the same step (and not downloaded again when already there), install names it in
BASE_MODEL_PATH, and the served answer is the adapter's: for the same greedy prompt it differs
from the base model's, served the same way by the same runtime.

The adapter's adapter_config.json names its base as a hub id ("asoba-test/Tiny-Base-Llama") whose
lower-cased tail is the bucket folder, as fine-tunes of hub models do: the planner resolves it to
that folder, while the runtime could not find it next to the adapter by that name (the case
differs), so the deployment only serves if install passes BASE_MODEL_PATH.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from local.executions import run_execution
from tests.conftest import Ports
from tests.e2e.helpers import get_json

BASE = "tiny-base-llama"
ADAPTER = "tiny-base-llama-lora"
BASE_HUB_ID = "asoba-test/Tiny-Base-Llama"
PROMPT = "The quick brown fox"
TOKENS = 16


@pytest.fixture(scope="module")
def adapter_in_bucket(local_cloud: Any, model_bucket: str, tiny_model: Path, tmp_path_factory: Any) -> str:
    from local.bucket import upload_model
    from local.models import build_tiny_lora

    adapter = build_tiny_lora(tiny_model, tmp_path_factory.mktemp("adapter") / ADAPTER, base_name=BASE_HUB_ID)
    s3 = local_cloud.client("s3")
    upload_model(s3, model_bucket, BASE, tiny_model)
    upload_model(s3, model_bucket, ADAPTER, adapter)
    return ADAPTER


def greedy_answer(port: int, model: str) -> str:
    code, status = get_json(f"http://127.0.0.1:{port}/status")
    assert code == 200 and status["status"] == "healthy" and status["model"] == model, status
    code, generated = get_json(
        f"http://127.0.0.1:{port}/generate",
        {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True},
    )
    assert code == 200, generated
    assert generated["usage"]["completion_tokens"] == TOKENS
    return str(generated["choices"][0]["text"])


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file's inode and change time: a download (s5cmd writes a new file) changes both."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_ctime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".asoba-synced"  # the sync's marker, rewritten by each sync
    }


def test_an_adapter_deploys_on_its_base_and_answers_as_the_adapter(
    sfn: Any, machine_arn: str, instance: Any, adapter_in_bucket: str, ports: Ports
) -> None:
    # Given the base model deployed and answering a greedy prompt
    base_run = run_execution(sfn, machine_arn, {"model": BASE}, timeout=600)
    assert base_run.status == "SUCCEEDED", (base_run.error, base_run.cause)
    base_text = greedy_answer(ports.coexist, BASE)
    base_folder = instance.models_root / BASE
    base_files = folder_state(base_folder)

    # When the adapter is deployed in the base's place, the base stopping first
    result = run_execution(
        sfn, machine_arn, {"model": adapter_in_bucket, "strategy": "stop-start"}, timeout=600
    )

    # Then the execution succeeded with a plan that names the base
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    record = result.output
    assert record["outcome"] == "succeeded" and record["deploy_model"] == ADAPTER
    plan = record["plan"]
    assert (plan["base_model"], plan["base_model_path"]) == (BASE, str(base_folder))
    assert plan["model_path"] == str(instance.models_root / ADAPTER)
    # a stop-start in place: its downtime measured, from the restart to the healthy answer
    assert record["switch"]["strategy"] == "stop-start" and plan["unit"] == "asoba-inference.service"
    assert 0 < record["switch"]["downtime_s"] < 600, record["switch"]
    # the base was already on the instance: only the adapter's bytes were to move
    adapter_bytes = sum(
        p.stat().st_size
        for p in (instance.models_root / ADAPTER).rglob("*")
        if p.is_file() and p.name != ".asoba-synced"  # the sync's own completion marker
    )
    assert plan["bytes_to_transfer"] == adapter_bytes

    # And both folders are under the models root, the base's files untouched by the second sync
    synced = record["results"]["sync"]
    assert synced["model"] == ADAPTER and synced["files_transferred"] == synced["files_total"] > 0
    assert synced["base"]["model"] == BASE
    assert (synced["base"]["files_transferred"], synced["base"]["bytes_transferred"]) == (0, 0)
    assert synced["base"]["files_total"] == len(base_files)
    assert (instance.models_root / ADAPTER / "adapter_config.json").is_file()
    assert (base_folder / "model.safetensors").is_file()
    assert folder_state(base_folder) == base_files

    # And the env file names the base for the runtime
    env = dict(
        line.split("=", 1)
        for line in (instance.env_dir / "env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert env["MODEL_PATH"] == str(instance.models_root / ADAPTER)
    assert env["BASE_MODEL_PATH"] == str(base_folder)

    # And the served answer is the adapter's, not the base's
    code, status = get_json(f"http://127.0.0.1:{ports.coexist}/status")
    assert code == 200 and status["status"] == "healthy"
    adapter_text = greedy_answer(ports.coexist, ADAPTER)
    assert adapter_text != base_text, "the adapter did not change the greedy answer"


SECOND_ADAPTER = "tiny-base-llama-lora-b"


@pytest.fixture(scope="module")
def second_adapter_in_bucket(
    local_cloud: Any, model_bucket: str, tiny_model: Path, tmp_path_factory: Any, adapter_in_bucket: str
) -> str:
    from local.bucket import upload_model
    from local.models import build_tiny_lora

    folder = tmp_path_factory.mktemp("adapter-b") / SECOND_ADAPTER
    adapter = build_tiny_lora(tiny_model, folder, base_name=BASE_HUB_ID, seed=7)
    upload_model(local_cloud.client("s3"), model_bucket, SECOND_ADAPTER, adapter)
    return SECOND_ADAPTER


def completion(port: int, model: str) -> str:
    code, body = get_json(
        f"http://127.0.0.1:{port}/v1/completions",
        {"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True},
    )
    assert code == 200 and body["model"] == model, body
    return str(body["choices"][0]["text"])


def test_two_adapters_of_one_base_join_the_process_that_serves_it(
    sfn: Any,
    machine_arn: str,
    instance: Any,
    adapter_in_bucket: str,
    second_adapter_in_bucket: str,
    ports: Ports,
) -> None:
    # Given the base model deployed (the primary unit)
    base_run = run_execution(sfn, machine_arn, {"model": BASE, "benchmark": False}, timeout=600)
    assert base_run.status == "SUCCEEDED", (base_run.error, base_run.cause)
    base_text = completion(ports.coexist, BASE)

    # When two adapters of it are deployed, each with "resident": "keep"
    plans = []
    for adapter in (adapter_in_bucket, second_adapter_in_bucket):
        run = run_execution(
            sfn, machine_arn, {"model": adapter, "resident": "keep", "benchmark": False}, timeout=600
        )
        assert run.status == "SUCCEEDED", (run.error, run.cause)
        plans.append(run.output["plan"])

    # Then each joined the base's process: same unit and port, no second copy of the base, and
    # the plan says how much GPU memory that saved
    for plan in plans:
        assert (plan["unit"], plan["port"]) == ("asoba-inference.service", ports.coexist)
        assert plan["joins"]["unit"] == "asoba-inference.service"
        assert plan["joins"]["serving"] == BASE
        assert plan["joins"]["gpu_saved_bytes"] > plan["gpu"]["need_bytes"] > 0
    both = plans[1]["joins"]["adapters"]
    assert both == (
        f"{ADAPTER}={instance.models_root / ADAPTER},{SECOND_ADAPTER}={instance.models_root / SECOND_ADAPTER}"
    )
    runtimes = {u for u in instance.processes() if u.startswith("asoba-inference")}
    assert runtimes == {"asoba-inference.service"}
    env = (instance.env_dir / "env").read_text()
    assert f"MODEL_NAME={BASE}\n" in env and f"ADAPTERS={both}\n" in env

    # And /v1/models lists the base and both adapters, each answering as itself
    code, listed = get_json(f"http://127.0.0.1:{ports.coexist}/v1/models")
    assert code == 200
    assert [(m["id"], m.get("parent")) for m in listed["data"]] == [
        (BASE, None),
        (ADAPTER, BASE),
        (SECOND_ADAPTER, BASE),
    ]
    answers = {name: completion(ports.coexist, name) for name in (BASE, ADAPTER, SECOND_ADAPTER)}
    assert answers[BASE] == base_text
    assert len(set(answers.values())) == 3, answers
    assert {name: completion(ports.coexist, name) for name in answers} == answers
