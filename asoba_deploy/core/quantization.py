"""The quantization kinds a plan may name: the one list the planner, the manifest and the
install document agree on.

The instance runtime (instance_runtime/settings.py) ships to the instance without this
package, so it keeps its own copy of the Literal; tests/unit/test_quantization_kinds.py holds
it, and ssm_documents/install.yaml's `Quantization` allowedValues, equal to `KINDS`.
"""

from __future__ import annotations

from typing import Literal, get_args

# Kinds a checkpoint can be stored in (config.json quantization_config), loaded as stored.
Prequantized = Literal["bnb-4bit", "bnb-8bit", "awq", "gptq"]
# Every kind a plan names: the pre-quantized ones, bnb-4bit/bnb-8bit also on load, or none.
Quantization = Literal["none", Prequantized]

KINDS: tuple[Quantization, ...] = get_args(Quantization)
PREQUANTIZED_KINDS: tuple[Prequantized, ...] = get_args(Prequantized)

DESCRIPTIONS: dict[Quantization, str] = {
    "none": "unquantized, in the compute dtype (bf16 or fp16)",
    "bnb-4bit": "bitsandbytes NF4, quantized on load (or a bitsandbytes 4-bit checkpoint as stored)",
    "bnb-8bit": "bitsandbytes LLM.int8(), quantized on load (or a bitsandbytes 8-bit checkpoint as stored)",
    "awq": "a pre-quantized AWQ checkpoint, loaded as stored",
    "gptq": "a pre-quantized GPTQ checkpoint, loaded as stored",
}
