"""The engine a plan names (core.engines) and the memory vLLM is told to take.

Given the seed's A10G instance reporting its compute capability and what the runtime's Python can
import, when the planner plans, then it names vLLM only where vLLM will load the model, and sizes
vLLM's preallocation (gpu_memory_utilization x total) to its own GPU budget, so Flux keeps its memory.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asoba_deploy.core.contracts import DeployRequest
from asoba_deploy.core.engines import choose_engine
from asoba_deploy.core.planner import MemoryEstimate, Plan, plan
from asoba_deploy.core.policy import Policy
from asoba_deploy.core.snapshot import GpuDevice, InstanceSnapshot, RuntimePython
from local.sparse_models import decoder_tensors, manifest_from_tensors, seed_manifest
from tests.unit.planner_support import (
    A10G_TOTAL,
    FLUX_GPU,
    GIB,
    OTHER_GPU,
    flux_stopped_snapshot,
    seed_snapshot,
)

# SmolLM2-135M-Instruct's config (the demo's model).
SMOLLM2: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "num_hidden_layers": 30,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
VLLM_PYTHON = RuntimePython(
    python="/opt/asoba-inference/venv/bin/python",
    source="runtime-venv",
    python_version="3.12.3",
    torch="2.9.0",
    vllm="0.32.0",
    bitsandbytes="0.50.2",
    gptqmodel=None,
)
A10G = GpuDevice(
    index=0, name="NVIDIA A10G", memory_total_bytes=A10G_TOTAL, memory_used_bytes=0, compute_capability="8.6"
)


def with_capabilities(
    snapshot: InstanceSnapshot, capability: str | None = "8.6", runtime: RuntimePython | None = VLLM_PYTHON
) -> InstanceSnapshot:
    """`snapshot` as collect-resources reports it today: compute capability and runtime packages."""
    gpus = [gpu.model_copy(update={"compute_capability": capability}) for gpu in snapshot.gpus]
    return snapshot.model_copy(update={"gpus": gpus, "runtime_python": runtime})


def smollm2() -> Any:
    return manifest_from_tensors("smollm2-135m-instruct", SMOLLM2, decoder_tensors(SMOLLM2))


def plan_of(manifest: Any, snapshot: InstanceSnapshot, policy: Policy | None = None, **request: Any) -> Plan:
    return plan(manifest, snapshot, DeployRequest(model=manifest.name, **request), policy or Policy())


# ------------------------------------------------------------------------------ the choice


@pytest.mark.parametrize(
    ("quantization", "adapter", "gpus", "runtime", "engine", "words"),
    [
        ("none", False, [A10G], VLLM_PYTHON, "vllm", "compute capability 8.6"),
        ("awq", False, [A10G], VLLM_PYTHON, "vllm", "serves AWQ checkpoints"),
        ("gptq", False, [A10G], VLLM_PYTHON, "vllm", "serves GPTQ checkpoints"),
        ("bnb-4bit", False, [A10G], VLLM_PYTHON, "transformers", "bitsandbytes"),
        ("bnb-8bit", False, [A10G], VLLM_PYTHON, "transformers", "bitsandbytes"),
        ("none", True, [A10G], VLLM_PYTHON, "transformers", "LoRA adapter"),
        ("none", False, [], VLLM_PYTHON, "transformers", "no GPU"),
        (
            "none",
            False,
            [A10G.model_copy(update={"compute_capability": None})],
            VLLM_PYTHON,
            "transformers",
            "does not report the compute capability",
        ),
        # a Tesla K80 (3.7) and a P100 (6.0) sit below vLLM's 7.0; a V100 (7.0) lacks AWQ's 7.5
        (
            "none",
            False,
            [A10G.model_copy(update={"name": "Tesla K80", "compute_capability": "3.7"})],
            VLLM_PYTHON,
            "transformers",
            "3.7, below the 7.0 of vLLM's floor",
        ),
        (
            "gptq",
            False,
            [A10G.model_copy(update={"name": "Tesla P100", "compute_capability": "6.0"})],
            VLLM_PYTHON,
            "transformers",
            "6.0, below the 7.0",
        ),
        (
            "none",
            False,
            [A10G.model_copy(update={"name": "Tesla V100", "compute_capability": "7.0"})],
            VLLM_PYTHON,
            "vllm",
            "meets vLLM's 7.0",
        ),
        (
            "awq",
            False,
            [A10G.model_copy(update={"name": "Tesla V100", "compute_capability": "7.0"})],
            VLLM_PYTHON,
            "transformers",
            "below the 7.5 of vLLM's AWQ kernels",
        ),
        (
            "none",
            False,
            [A10G],
            VLLM_PYTHON.model_copy(update={"vllm": None}),
            "transformers",
            "vLLM is not importable by the runtime's Python (/opt/asoba-inference/venv/bin/python)",
        ),
        ("none", False, [A10G], None, "transformers", "vLLM is not reported"),
        ("none", False, [A10G, A10G.model_copy(update={"index": 1})], VLLM_PYTHON, "transformers", "2 GPUs"),
    ],
)
def test_the_engine_is_vllm_only_where_vllm_loads_the_model(
    quantization: Any,
    adapter: bool,
    gpus: list[GpuDevice],
    runtime: RuntimePython | None,
    engine: str,
    words: str,
) -> None:
    choice = choose_engine(quantization, adapter=adapter, gpus=gpus, runtime=runtime)
    assert choice.engine == engine
    assert choice.reason.startswith(f"{engine}: ")
    assert words in choice.reason, choice.reason


def test_without_a_gpu_awq_and_gptq_go_to_vllms_cpu_build_when_transformers_cannot_load_them() -> None:
    cpu_vllm = VLLM_PYTHON.model_copy(update={"vllm": "0.32.0", "gptqmodel": None})
    for kind in ("awq", "gptq"):
        choice = choose_engine(kind, adapter=False, gpus=[], runtime=cpu_vllm)
        assert choice.engine == "vllm" and "CPU build" in choice.reason, choice.reason
    # but not when transformers has gptqmodel, nor for what transformers loads by itself
    with_gptqmodel = cpu_vllm.model_copy(update={"gptqmodel": "5.0.0"})
    assert choose_engine("awq", adapter=False, gpus=[], runtime=with_gptqmodel).engine == "transformers"
    assert choose_engine("none", adapter=False, gpus=[], runtime=cpu_vllm).engine == "transformers"


# ------------------------------------------------------------------------------ the plan


def test_smollm2_beside_flux_on_an_a10g_gets_vllm_sized_to_leave_flux_its_memory() -> None:
    # Given the seed's g5.4xlarge: an A10G (23,028 MiB) with Flux holding 12 GiB and 300 MiB of others
    snapshot = with_capabilities(seed_snapshot())

    result = plan_of(smollm2(), snapshot)

    # Then the small model coexists, served by vLLM
    assert (result.action, result.stop_services, result.fits) == ("coexist", [], True)
    assert result.engine == "vllm"
    assert "NVIDIA A10G (compute capability 8.6)" in result.engine_reason
    assert result.engine_reason in result.reasons
    # And the GPU need counts vLLM's own allocations
    assert result.gpu.breakdown["engine_overhead"] == Policy().vllm_overhead_bytes
    assert result.ram.breakdown["engine_process"] == Policy().vllm_ram_bytes
    # And vLLM's preallocation is the plan's GPU need, rounded up by at most one step
    utilization = result.gpu_memory_utilization
    assert utilization is not None
    assert result.gpu.need_bytes <= utilization * A10G_TOTAL < result.gpu.need_bytes + 0.001 * A10G_TOTAL
    # And what vLLM wants free at start (utilization x total) is free beside Flux, which keeps its memory
    assert utilization * A10G_TOTAL <= A10G_TOTAL - FLUX_GPU - OTHER_GPU
    assert utilization < 0.15
    # And the sequence length and concurrency are the plan's
    assert (result.max_model_len, result.max_num_seqs) == (result.context_tokens, 8) == (4096, 8)
    assert any(f"gpu_memory_utilization {utilization:g}" in reason for reason in result.reasons)
    assert "with vllm" in result.summary


def test_the_vllm_budget_never_exceeds_what_the_services_that_stay_leave() -> None:
    # A need between floor(available) and ceil(need) at the utilization's step
    step = 0.001
    total = 1000 * GIB
    need = int(500.0004 * GIB)
    estimate = MemoryEstimate(
        need_bytes=need,
        breakdown={"weights": need},
        total_bytes=total,
        used_before_bytes=total - need - GIB // 10000,
        free_before_bytes=need + GIB // 10000,
        used_by_others_after_bytes=total - need - GIB // 10000,
        available_bytes=need + GIB // 10000,
        free_after_bytes=GIB // 10000,
    )
    from asoba_deploy.core.planner.estimate import gpu_memory_utilization

    utilization = gpu_memory_utilization(estimate, Policy(utilization_step=step))
    assert utilization == 0.5  # rounded up it would be 0.501, more than is free
    assert utilization * total <= estimate.available_bytes


def test_deepseek_replaces_flux_on_vllm_unquantized_with_its_overhead_counted() -> None:
    result = plan_of(seed_manifest("deepseek-r1-8b"), with_capabilities(seed_snapshot()))
    assert (result.action, result.quantization, result.engine, result.fits) == (
        "replace",
        "none",
        "vllm",
        True,
    )
    # 14.96 weights + 0.5 KV + 0.5 CUDA + 1.55 margin + 1.0 vLLM: still under the 20 GiB threshold
    assert 18.0 * GIB < result.gpu.need_bytes < 19.0 * GIB
    assert result.gpu_memory_utilization is not None
    assert result.gpu.need_bytes <= result.gpu_memory_utilization * A10G_TOTAL <= A10G_TOTAL - OTHER_GPU


def test_the_awq_variant_of_qwen3_14b_is_served_by_vllm() -> None:
    result = plan_of(seed_manifest("qwen3-14b"), with_capabilities(flux_stopped_snapshot()))
    assert (result.deploy_model, result.quantization, result.engine) == ("qwen3-14b-awq", "awq", "vllm")
    # transformers would load AWQ through gptqmodel, which this runtime lacks: no warning with vLLM
    assert not any("gptqmodel" in warning for warning in result.warnings)


def test_bitsandbytes_on_load_goes_to_transformers_without_vllm_overheads() -> None:
    result = plan_of(smollm2(), with_capabilities(seed_snapshot()), force_quantize=True)
    assert (result.quantization, result.engine, result.gpu_memory_utilization) == (
        "bnb-4bit",
        "transformers",
        None,
    )
    assert "bitsandbytes" in result.engine_reason
    assert "engine_overhead" not in result.gpu.breakdown and "engine_process" not in result.ram.breakdown
    assert result.max_model_len == result.context_tokens


def test_without_vllm_in_the_runtime_the_plan_says_so_and_keeps_the_seed_numbers() -> None:
    manifest = smollm2()
    bare = plan_of(manifest, seed_snapshot())  # no capabilities reported (an older collect-resources)
    without = plan_of(
        manifest, with_capabilities(seed_snapshot(), runtime=VLLM_PYTHON.model_copy(update={"vllm": None}))
    )
    for result in (bare, without):
        assert result.engine == "transformers" and result.gpu_memory_utilization is None
        assert "engine_overhead" not in result.gpu.breakdown
    assert "does not report the compute capability" in bare.engine_reason
    assert "not importable" in without.engine_reason
    assert bare.gpu == without.gpu


def test_a_cpu_instance_plans_transformers() -> None:
    # (it does not fit: the planner deploys onto GPUs; the closest option is the smallest one)
    result = plan_of(smollm2(), with_capabilities(seed_snapshot(gpus=[])))
    assert (result.engine, result.gpu_memory_utilization, result.fits) == ("transformers", None, False)


def test_transformers_with_awq_warns_when_gptqmodel_is_missing() -> None:
    snapshot = with_capabilities(flux_stopped_snapshot(), capability="7.0")  # a V100: no AWQ in vLLM
    result = plan_of(seed_manifest("qwen3-14b"), snapshot)
    assert (result.quantization, result.engine) == ("awq", "transformers")
    assert any("gptqmodel is not importable" in warning for warning in result.warnings)


def test_the_concurrency_target_comes_from_the_configuration() -> None:
    result = plan_of(smollm2(), with_capabilities(seed_snapshot()), Policy(max_num_seqs=32))
    assert result.max_num_seqs == 32


def test_older_plans_read_as_transformers_ones() -> None:
    current = plan_of(smollm2(), seed_snapshot()).model_dump(mode="json")
    for key in ("engine", "engine_reason", "gpu_memory_utilization", "max_model_len", "max_num_seqs"):
        current.pop(key)
    older = Plan.model_validate(current)
    assert (older.engine, older.gpu_memory_utilization, older.max_num_seqs) == ("transformers", None, 8)


# ------------------------------------------------------------------------------ install's parameters


def test_install_passes_the_engine_and_its_sizes_on_to_the_env_file() -> None:
    import re
    from pathlib import Path

    import yaml

    from asoba_deploy.core.config import DeployConfig, Serving
    from asoba_deploy.core.settings import Settings
    from asoba_deploy.core.state import ExecutionState
    from asoba_deploy.core.steps import collect_parameters, install_parameters

    config = Settings(
        deploy=DeployConfig(
            instance_ids=["i-0123456789abcdef0"],
            model_bucket="asoba-llm-cache",
            serving=Serving(max_num_seqs=16, queue_size=32),
        )
    )
    policy = Policy.from_config(config.deploy)
    declared = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "ssm_documents" / "install.yaml").read_text()
    )["parameters"]
    for snapshot, engine in ((with_capabilities(seed_snapshot()), "vllm"), (seed_snapshot(), "transformers")):
        result = plan_of(smollm2(), snapshot, policy)
        state = ExecutionState(
            request=DeployRequest(model=result.model), instance_id="i-0123456789abcdef0", plan=result
        )
        sent = install_parameters(config, state)
        assert (sent["Engine"], sent["MaxBatchSize"], sent["QueueSize"]) == (engine, "16", "32")
        assert sent["ContextTokens"] == str(result.max_model_len) == "4096"
        if engine == "vllm":
            assert result.gpu_memory_utilization is not None
            assert float(sent["GpuMemoryUtilization"]) == result.gpu_memory_utilization
        else:
            assert "GpuMemoryUtilization" not in sent  # the document's default; transformers ignores it
        for name in ("Engine", "MaxBatchSize", "QueueSize", "GpuMemoryUtilization"):
            if name in sent:
                rule = declared[name]
                assert sent[name] in rule.get("allowedValues", []) or re.fullmatch(
                    rule.get("allowedPattern", "$^"), sent[name]
                )
    assert collect_parameters(config, state)["BasePython"] == "/usr/bin/python3"


# ------------------------------------------------------------------------------ a property


@settings(max_examples=60, deadline=None)
@given(
    total_mib=st.integers(4 * 1024, 96 * 1024),
    flux_share=st.floats(0, 0.9),
    model=st.sampled_from(["smollm2", "deepseek-r1-8b", "qwen3-14b-awq"]),
    allow_stop_flux=st.booleans(),
)
def test_vllm_is_never_told_to_take_what_the_services_that_stay_hold(
    total_mib: int, flux_share: float, model: str, allow_stop_flux: bool
) -> None:
    total = total_mib << 20
    flux_gpu = int(total * flux_share)
    base = seed_snapshot()
    snapshot = with_capabilities(
        base.model_copy(
            update={
                "gpus": [
                    A10G.model_copy(update={"memory_total_bytes": total, "memory_used_bytes": flux_gpu})
                ],
                "services": [
                    base.services[0].model_copy(update={"gpu_memory_bytes": flux_gpu}),
                    *base.services[1:],
                ],
            }
        )
    )
    manifest = smollm2() if model == "smollm2" else seed_manifest(model)
    result = plan_of(manifest, snapshot, allow_stop_flux=allow_stop_flux)
    if result.engine != "vllm" or not result.fits:
        return
    utilization = result.gpu_memory_utilization
    assert utilization is not None
    # vLLM wants utilization x total free at start: never more than the plan found available
    assert utilization * total <= result.gpu.available_bytes
    # and it is the plan's budget, less at most one rounding step
    assert utilization * total >= result.gpu.need_bytes - 0.001 * total
    if not result.stop_services:
        assert utilization * total <= total - flux_gpu  # Flux keeps its memory
