"""install writes the plan's serving engine and the sizes it obeys into the env file the runtime reads.

The real planner plans SmolLM2 beside Flux on the seed's A10G reporting vLLM; the real step builds
install's parameters from that plan; the document (on a sandbox, with the fake runtime and the real
templates) renders them; the runtime's own settings read the file back as the plan said.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from asoba_deploy.core.config import DeployConfig
from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.planner import plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.settings import Settings, StackResources
from asoba_deploy.core.state import ExecutionState
from asoba_deploy.core.steps import install_parameters
from instance_runtime.settings import RuntimeSettings
from local.sandbox import Sandbox, free_port, run_document
from local.sandbox.bundles import fake_runtime_bundle, upload
from tests.fixtures import Aws
from tests.unit.planner_support import seed_snapshot
from tests.unit.test_engines import smollm2, with_capabilities

ENGINE_PARAMETERS = ("Engine", "MaxBatchSize", "QueueSize", "GpuMemoryUtilization", "ContextTokens")


def env_file(sandbox: Sandbox) -> dict[str, str]:
    lines = (sandbox.env_dir / "env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_the_env_file_carries_the_plans_engine_and_memory(
    aws: Aws, make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Given the plan of SmolLM2 beside Flux on an A10G whose runtime has vLLM
    planned = plan(
        smollm2(), with_capabilities(seed_snapshot()), DeployRequest(model="smollm2-135m-instruct"), Policy()
    )
    assert planned.engine == "vllm" and planned.gpu_memory_utilization is not None
    config = Settings(
        deploy=DeployConfig(instance_ids=["i-0123456789abcdef0"], model_bucket="asoba-llm-cache"),
        stack=StackResources(runtime_bundle_uri="unused"),
    )
    state = ExecutionState(
        request=DeployRequest(model=planned.model), instance_id="i-0123456789abcdef0", plan=planned
    )
    sent = install_parameters(config, state)
    engine_values: dict[str, Any] = {name: sent[name] for name in ENGINE_PARAMETERS}

    # And a sandbox with the model synced and the runtime's asset in S3
    sandbox = make_sandbox(gpu=False)
    model = sandbox.models_root / planned.deploy_model
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    bundle = upload(aws.s3, aws.bucket, fake_runtime_bundle(tmp_path / "runtime.zip"), "assets/runtime.zip")

    # When install runs with those values
    installed = run_document(
        aws.ssm,
        sandbox,
        "install",
        RuntimeBundleUri=bundle,
        ModelName=planned.deploy_model,
        ModelPath=str(model),
        Port=str(free_port()),
        Host="127.0.0.1",
        **engine_values,
    )

    # Then the env file names the engine and vLLM's budget as the plan computed them
    assert installed.status == "Success", installed.explain()
    env = env_file(sandbox)
    assert (env["ENGINE"], env["MAX_BATCH_SIZE"], env["QUEUE_SIZE"]) == ("vllm", "8", "8")
    assert env["GPU_MEMORY_UTILIZATION"] == f"{planned.gpu_memory_utilization:.3f}"
    assert env["CONTEXT_LENGTH"] == str(planned.max_model_len) == "4096"
    # And the runtime reads it back as the plan said (CONTEXT_LENGTH is vLLM's max_model_len,
    # MAX_BATCH_SIZE its max_num_seqs)
    settings = RuntimeSettings(_env_file=str(sandbox.env_dir / "env"))  # type: ignore[call-arg]
    assert settings.engine == "vllm"
    assert settings.gpu_memory_utilization == planned.gpu_memory_utilization
    assert (settings.context_length, settings.max_batch_size, settings.queue_size) == (4096, 8, 8)

    # When an older caller sends none of them, the defaults are the runtime's own
    again = run_document(
        aws.ssm,
        sandbox,
        "install",
        RuntimeBundleUri=bundle,
        ModelName=planned.deploy_model,
        ModelPath=str(model),
        Port=str(free_port()),
        Host="127.0.0.1",
    )
    assert again.status == "Success", again.explain()
    defaults = RuntimeSettings(_env_file=str(sandbox.env_dir / "env"))  # type: ignore[call-arg]
    assert defaults.engine == "transformers"
    assert (defaults.max_batch_size, defaults.queue_size, defaults.gpu_memory_utilization) == (8, 8, 0.9)
