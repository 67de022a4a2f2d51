"""benchmark: the document measures a real runtime serving the real tiny model, with the system
python3's standard library only; a service that refuses the requests fails it with the reason."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from asoba_deploy.core.benchmark import from_result
from local.sandbox import Sandbox, free_port, run_document
from tests.fixtures import Aws
from tests.runtime.harness import RuntimeServer


@pytest.fixture
def serve_model(tmp_path: Path) -> Iterator[Callable[[Path, str], RuntimeServer]]:
    servers: list[RuntimeServer] = []

    def start(model: Path, name: str) -> RuntimeServer:
        server = RuntimeServer(
            env={"MODEL_PATH": str(model), "MODEL_NAME": name, "MAX_BATCH_SIZE": "4", "QUEUE_SIZE": "8"},
            log_path=tmp_path / f"runtime-{len(servers)}.log",
        )
        servers.append(server)
        server.start().wait_status("healthy")
        return server

    yield start
    for server in servers:
        server.stop()


def generation_tokens(server: RuntimeServer) -> int:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("asoba_inference_generation_tokens_total "))
    return int(float(line.split()[1]))


def test_it_measures_the_tiny_model_where_it_runs(
    aws: Aws,
    make_sandbox: Callable[..., Sandbox],
    tiny_model: Path,
    serve_model: Callable[[Path, str], RuntimeServer],
) -> None:
    # Given the real runtime serving the tiny model, healthy
    server = serve_model(tiny_model, "tiny-llama")
    before = generation_tokens(server)
    sandbox = make_sandbox()

    # When the benchmark runs against it at concurrency 1 and 3, 8 tokens a request
    run = run_document(
        aws.ssm,
        sandbox,
        "benchmark",
        Port=str(server.port),
        ModelName="tiny-llama",
        MaxTokens="8",
        Concurrency="3",
    )

    # Then it reports positive measurements, the runtime's own load time, and says why there is
    # no GPU memory figure on this CPU instance
    assert run.status == "Success", run.explain()
    result = run.result
    assert result is not None and result["ok"] is True, result
    assert result["ttft_s"] > 0
    assert result["decode_tokens_per_s"] > 0
    assert result["c1"]["tokens"] == 8
    assert result["concurrent"]["concurrency"] == 3 and result["concurrent"]["tokens"] == 3 * 8
    assert result["concurrent"]["tokens_per_s"] > 0
    status = httpx.get(f"{server.url}/status", timeout=10).json()
    assert result["load_s"] == status["load"]["seconds"] and result["load_s"] > 0
    assert result["peak_gpu_memory_mib"] is None and "no GPU" in result["gpu_memory_note"]
    # the counters are the runtime's: warm-up (2) + one request + three at once
    assert result["counters_before"]["generation"] == before
    assert (
        result["counters_after"]["generation"] - before == 2 + 8 + 3 * 8 == generation_tokens(server) - before
    )
    summary = from_result(result, measured_at="2026-12-01T00:00:00+00:00")
    assert summary.ok and summary.own_tokens == 34 and summary.concurrency == 3


def test_a_request_the_service_refuses_fails_it_with_the_reason(
    aws: Aws,
    make_sandbox: Callable[..., Sandbox],
    tiny_model: Path,
    tmp_path: Path,
    serve_model: Callable[[Path, str], RuntimeServer],
) -> None:
    # Given a model whose context (8 positions) is shorter than the benchmark's prompt
    short = tmp_path / "tiny-short"
    shutil.copytree(tiny_model, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 8
    (short / "config.json").write_text(json.dumps(config))
    server = serve_model(short, "tiny-short")

    run = run_document(aws.ssm, make_sandbox(), "benchmark", Port=str(server.port), ModelName="tiny-short")

    assert (run.status, run.response_code) == ("Failed", 1), run.explain()
    assert run.result is not None and run.result["ok"] is False
    assert "HTTP 422" in run.result["error"] and "the context is 8 tokens" in run.result["error"], run.result


def test_a_service_not_listening_fails_it(aws: Aws, make_sandbox: Callable[..., Sandbox]) -> None:
    run = run_document(aws.ssm, make_sandbox(), "benchmark", Port=str(free_port()), ModelName="tiny")
    assert run.status == "Failed", run.explain()
    assert run.result is not None and run.result["ok"] is False
    assert "ConnectionRefusedError" in run.result["error"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("ModelName", "tiny'; touch /tmp/x #"), ("Concurrency", "0"), ("MaxTokens", "1; id"), ("Port", "80 1")],
)
def test_hostile_parameters_are_refused(
    aws: Aws, make_sandbox: Callable[..., Sandbox], name: str, value: str
) -> None:
    from botocore.exceptions import ClientError

    values = {"Port": "8001", "ModelName": "tiny", "MaxTokens": "8", "Concurrency": "2", name: value}
    with pytest.raises(ClientError, match="InvalidParameters"):
        run_document(
            aws.ssm,
            make_sandbox(),
            "benchmark",
            Port=values["Port"],
            ModelName=values["ModelName"],
            MaxTokens=values["MaxTokens"],
            Concurrency=values["Concurrency"],
        )
