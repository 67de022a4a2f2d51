"""The planner: `plan(manifest, snapshot, request, policy) -> Plan`, a pure function.

It applies the seed's resource rules to exact sizes (from safetensors headers) and to
what the instance reports, and its output is the dry run. Three parts:

    estimate   what one way of loading the model needs: GPU, RAM, disk, files to transfer
    decide     the seed's rules: action, quantization, the first option that fits
    explain    the plan's reasons, shortfalls, warnings and summary in words
    roots      the models root: the fastest measured candidate with room (models_roots)
    timing     the plan's time_to_healthy: transfer, install, load, warm-up, from measured rates
    assemble   `plan()`: decide, explain, and the `Plan` (models) of both

Rules (thresholds from `Policy`, defaults from the seed):
1. Action. A model whose weights are under 3 GiB (`small_model_max_bytes`) runs beside Flux
   (`coexist`, port 8001); a larger one stops Flux (`replace`, port 8000). A small model
   that does not fit beside Flux falls back to `replace` when `allow_stop_flux`; a large
   one with `allow_stop_flux: false` is planned beside Flux and fits only if room is left.
2. Quantization. `force_quantize` gives bnb-4bit; a pre-quantized checkpoint (AWQ, GPTQ,
   bitsandbytes 4- or 8-bit) is loaded as stored. Otherwise the *full* unquantized GPU need
   (weights + KV reserve + CUDA context + margin, below) is compared with the 20 GiB threshold
   (`quantize_above_bytes`): above it, the pre-quantized AWQ variant is taken when the
   bucket has one (`awq`, deploy_model = the variant), else bitsandbytes 4-bit on load;
   at or under it, `none` unless only a quantized form fits (AWQ variant, then bnb-4bit).
   The kinds a plan can name are `core.quantization.KINDS`.
3. Fit. GPU need <= GPU total - what other processes keep using after the stops; RAM
   likewise and under the runtime unit's MemoryMax; bytes to transfer + reserve <= disk
   free on the chosen models root; the port is not held by a service that keeps running.
4. Models root. Among the candidates collect-resources measured (the context's models_roots),
   one already holding the whole model, else the highest measured write rate with room (ties:
   the context's order); none with room: the plan does not fit. At or below gp3's 125 MiB/s
   baseline: a warning.

Memory model (GPU):
    weights      bf16/fp16: 2 B/param; bnb-4bit: `nf4_bits_per_param` (4.5) bits for Linear
                 weights, embeddings/lm_head and 1-D tensors stay 16-bit; pre-quantized
                 storage as stored; a LoRA adapter's tensors at fp32 (PEFT upcasts them)
    kv_cache     2 x layers x kv_heads x head_dim x context_tokens x kv_cache_bytes
    cuda_context 0.5 GiB
    margin       10 % of weights + kv_cache (allocator fragmentation, activations)
RAM: runtime (python + torch + CUDA libraries, 2 GiB) + load buffer (the largest weight
file: transformers materialises one shard at a time) + the same margin fraction.

The tension with the seed, and how it is resolved. The seed says deepseek-r1-8b (~16 GB,
"~18GB memory", quantization "optional") runs unquantized on the 23 GB GPU while qwen3-14b
(28 GB) must be quantized, and that quantization starts "above 20 GB". Judged by file size
alone, 16 GB and 28 GB sit either side of 20 GB, but the GPU also holds the KV cache, so the
decision depends on the context reserved: DeepSeek-R1-Distill-Llama-8B keeps 128 KiB of KV
per token, so at its full 131,072-token window the KV alone is 16 GiB and the model would
need ~34 GiB. The planner therefore applies the threshold to the full estimate at the
request's `context_tokens` (default 4096, the seed's "sensible" working context): deepseek
needs 14.96 weights + 0.50 KV + 0.50 CUDA + 1.55 margin = 17.5 GiB (the seed's "~18GB"),
under 20 -> `none`; qwen3-14b needs 31.4 GiB unquantized (the seed's "~30GB") -> AWQ variant
(11.4 GiB, the seed's "~12GB") or bnb-4bit (12.0 GiB). "Optional" then means: `force_quantize`,
or a long context (e.g. 32768 tokens: 21.4 GiB) quantizes deepseek too. The context is
clamped to the model's max_position_embeddings. qwen3-coder-30b (61 GB, MoE: 48 layers x 128
experts, every expert Linear quantized) gets 16.8 GiB of 4-bit weights (the seed's "~16GB")
and needs 19.4 GiB in all: above the threshold unquantized (63.5 GiB), within the A10G's
22.5 GiB once Flux is stopped.

The Plan's fields are described in `planner.models`.
"""

from asoba_deploy.core.planner.assemble import plan
from asoba_deploy.core.planner.estimate import ADAPTER_BYTES_PER_PARAM, gpu_need, ram_need
from asoba_deploy.core.planner.explain import gib
from asoba_deploy.core.planner.models import (
    PLAN_SCHEMA_VERSION,
    Action,
    DiskEstimate,
    Dtype,
    Endpoints,
    MemoryEstimate,
    Plan,
    PlanFile,
    Quantization,
)

__all__ = [
    "ADAPTER_BYTES_PER_PARAM",
    "PLAN_SCHEMA_VERSION",
    "Action",
    "DiskEstimate",
    "Dtype",
    "Endpoints",
    "MemoryEstimate",
    "Plan",
    "PlanFile",
    "Quantization",
    "gib",
    "gpu_need",
    "plan",
    "ram_need",
]
