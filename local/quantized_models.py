"""Pre-quantized AWQ and GPTQ checkpoints, built here from a float model folder.

No quantization tool is downloaded: the weights of every decoder Linear layer are quantized
round-to-nearest (RTN, 4 bits, one scale per ``group_size`` input channels) and written in the
exact on-disk layouts the serving engines read:

* **AWQ, GEMM version** (AutoAWQ's ``WQLinear_GEMM``): asymmetric, per group a scale and an
  integer zero point. ``qweight`` int32 ``[in, out / 8]`` packs 8 output channels per word in
  the order ``0 2 4 6 1 3 5 7`` (nibble ``i`` holds channel ``8c + AWQ_ORDER[i]``); ``qzeros``
  int32 ``[in / group, out / 8]`` packed the same way; ``scales`` fp16 ``[in / group, out]``.
  ``W[o, i] = (q[i, o] - z[i // group, o]) * s[i // group, o]``.
* **GPTQ** (AutoGPTQ / GPTQModel ``checkpoint_format: gptq``, 4 bit, ``sym``, ``desc_act``
  false): symmetric, zero point 8. ``qweight`` int32 ``[in / 8, out]`` packs 8 *input* channels
  per word in order (nibble ``j`` holds input ``8r + j``); ``qzeros`` int32 ``[in / group,
  out / 8]`` packs output channels in order and stores ``zero - 1`` (the v1 format's offset,
  so every nibble is 7); ``scales`` fp16 ``[in / group, out]``; ``g_idx`` int32 ``[in]`` =
  ``i // group``. ``W[o, i] = (q[i, o] - (z + 1)) * s[g_idx[i], o]``.

Embeddings, norms and the (tied) LM head stay unquantized, in ``dtype`` (fp16 by default: the
W4A16 kernels take fp16 or bf16 activations, not fp32). ``config.json`` gets the
``quantization_config`` that transformers and vLLM read.

``dequantize_awq`` / ``dequantize_gptq`` read the packed tensors back into ``[out, in]`` float
weights: the tests compare them with the originals, and load them into a float model as the
reference for what the engine should generate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

QuantFormat = Literal["awq", "gptq"]

BITS = 4
PACK = 32 // BITS  # values per int32
MAXQ = 2**BITS - 1
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's GEMM packing order within one int32
_AWQ_REVERSE = tuple(AWQ_ORDER.index(i) for i in range(PACK))

# The decoder's Linear layers (Llama, Qwen, Mistral naming): q/k/v/o and gate/up/down.
_LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+_proj\.weight")
_MARKER = ".quantized"
_BUILDER_VERSION = 1  # bump when the written layout changes: cached builds are then redone
_COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


# ----- packing ---------------------------------------------------------------------------------


def _pack_rows(values: torch.Tensor, order: tuple[int, ...] = tuple(range(PACK))) -> torch.Tensor:
    """Pack ``[n, m]`` 4-bit values along dim 1 into int32 ``[n, m / 8]`` (nibble i <- ``order[i]``)."""
    import torch

    n, m = values.shape
    grouped = values.to(torch.int64).reshape(n, m // PACK, PACK)
    packed = torch.zeros(n, m // PACK, dtype=torch.int64)
    for i, source in enumerate(order):
        packed |= grouped[:, :, source] << (BITS * i)
    # Two's complement into int32: the top nibble may set the sign bit.
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _unpack_rows(packed: torch.Tensor, order: tuple[int, ...] = tuple(range(PACK))) -> torch.Tensor:
    """Inverse of ``_pack_rows``: int32 ``[n, m / 8]`` -> int64 ``[n, m]`` values in 0..15."""
    import torch

    words = packed.to(torch.int64) & 0xFFFFFFFF
    n, k = words.shape
    out = torch.empty(n, k, PACK, dtype=torch.int64)
    for i, source in enumerate(order):
        out[:, :, source] = (words >> (BITS * i)) & MAXQ
    return out.reshape(n, k * PACK)


def _groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[out, in]`` -> ``[out, in / group, group]`` in fp32, after checking the shapes fit."""
    import torch

    out_features, in_features = weight.shape
    if in_features % group_size or in_features % PACK or out_features % PACK:
        raise ValueError(
            f"a {out_features}x{in_features} Linear does not fit 4-bit groups of {group_size}: "
            f"in must be a multiple of {group_size} and of {PACK}, out a multiple of {PACK}"
        )
    return weight.to(torch.float32).reshape(out_features, in_features // group_size, group_size)


def quantize_awq(weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """RTN-quantize one ``[out, in]`` weight into AWQ GEMM tensors (qweight, qzeros, scales)."""
    import torch

    w = _groups(weight, group_size)
    wmin = w.amin(dim=2, keepdim=True)
    wmax = w.amax(dim=2, keepdim=True)
    scales = ((wmax - wmin) / MAXQ).clamp(min=1e-5).half().float()  # the scale as stored (fp16)
    zeros = torch.clamp(torch.round(-wmin / scales), 0, MAXQ)
    q = torch.clamp(torch.round(w / scales) + zeros, 0, MAXQ)
    out_features, in_features = weight.shape
    q_in_out = q.reshape(out_features, in_features).t().contiguous()  # [in, out]
    return {
        "qweight": _pack_rows(q_in_out, AWQ_ORDER),
        "qzeros": _pack_rows(zeros.squeeze(2).t().contiguous(), AWQ_ORDER),  # [groups, out/8]
        "scales": scales.squeeze(2).t().contiguous().half(),  # [groups, out]
    }


def dequantize_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """AWQ GEMM tensors -> the ``[out, in]`` fp32 weight they encode."""
    q = _unpack_rows(qweight, AWQ_ORDER)  # [in, out]
    zeros = _unpack_rows(qzeros, AWQ_ORDER).repeat_interleave(group_size, dim=0)
    return ((q - zeros).float() * scales.float().repeat_interleave(group_size, dim=0)).t().contiguous()


def quantize_gptq(weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """RTN-quantize one ``[out, in]`` weight into GPTQ tensors (sym, desc_act false)."""
    import torch

    w = _groups(weight, group_size)
    zero = (MAXQ + 1) // 2  # 8: symmetric
    amax = w.abs().amax(dim=2, keepdim=True)
    scales = (2 * amax / MAXQ).clamp(min=1e-5).half().float()
    q = torch.clamp(torch.round(w / scales) + zero, 0, MAXQ)
    out_features, in_features = weight.shape
    groups = in_features // group_size
    q_in_out = q.reshape(out_features, in_features).t().contiguous()  # [in, out]
    stored_zeros = torch.full((groups, out_features), zero - 1, dtype=torch.int64)  # v1: zero - 1
    return {
        "qweight": _pack_rows(q_in_out.t().contiguous()).t().contiguous(),  # [in/8, out]
        "qzeros": _pack_rows(stored_zeros),  # [groups, out/8]
        "scales": scales.squeeze(2).t().contiguous().half(),  # [groups, out]
        "g_idx": (torch.arange(in_features) // group_size).to(torch.int32),
    }


def dequantize_gptq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor
) -> torch.Tensor:
    """GPTQ (v1) tensors -> the ``[out, in]`` fp32 weight they encode."""
    q = _unpack_rows(qweight.t().contiguous()).t()  # [in, out]
    zeros = _unpack_rows(qzeros) + 1  # [groups, out]
    index = g_idx.to("cpu").long()
    return ((q - zeros[index]).float() * scales.float()[index]).t().contiguous()


# ----- checkpoints -----------------------------------------------------------------------------


def quantization_config(fmt: QuantFormat, group_size: int) -> dict[str, object]:
    """The ``quantization_config`` block of config.json, as AutoAWQ / GPTQModel write it."""
    if fmt == "awq":
        return {
            "quant_method": "awq",
            "bits": BITS,
            "group_size": group_size,
            "zero_point": True,
            "version": "gemm",
            "modules_to_not_convert": None,
        }
    return {
        "quant_method": "gptq",
        "bits": BITS,
        "group_size": group_size,
        "desc_act": False,
        "sym": True,
        "static_groups": False,
        "true_sequential": True,
        "damp_percent": 0.01,
        "checkpoint_format": "gptq",
        "lm_head": False,
    }


def build_quantized_model(
    source: Path,
    dest: Path,
    fmt: QuantFormat,
    *,
    group_size: int = 32,
    dtype: Literal["float16", "bfloat16"] = "float16",
) -> Path:
    """Write ``source`` (a float safetensors model folder) as an ``fmt`` checkpoint at ``dest``.

    Skipped when ``dest`` already holds the same build (its ``.quantized`` marker names the
    source, format, group size, dtype and builder version). The folder is written beside ``dest`` and renamed
    into place, so concurrent test runs sharing a cache never see half a checkpoint.
    """
    source, dest = Path(source), Path(dest)
    recipe = {
        "source": str(source.resolve()),
        "format": fmt,
        "group_size": group_size,
        "dtype": dtype,
        "builder": _BUILDER_VERSION,
    }
    marker = dest / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    work.chmod(0o755)
    try:
        _write_quantized(source, work, fmt, group_size, dtype)
        (work / _MARKER).write_text(json.dumps(recipe))
        if marker.is_file() and json.loads(marker.read_text()) == recipe:
            return dest  # someone else finished the same build first: keep theirs
        if dest.exists():  # a stale or different build
            shutil.rmtree(dest, ignore_errors=True)
        os.rename(work, dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _write_quantized(source: Path, dest: Path, fmt: QuantFormat, group_size: int, dtype: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{source} holds no .safetensors weights")
    keep = getattr(torch, dtype)
    tensors: dict[str, torch.Tensor] = {}
    quantized = 0
    for file in files:
        for name, tensor in load_file(file).items():
            if not _LINEAR.fullmatch(name):
                tensors[name] = tensor.to(keep) if tensor.is_floating_point() else tensor
                continue
            prefix = name.removesuffix(".weight")
            packed = quantize_awq(tensor, group_size) if fmt == "awq" else quantize_gptq(tensor, group_size)
            tensors.update({f"{prefix}.{key}": value for key, value in packed.items()})
            quantized += 1
    if not quantized:
        raise ValueError(f"{source} has no decoder Linear layers named like {_LINEAR.pattern}")
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config.pop("torch_dtype", None)
    config["dtype"] = dtype
    config["quantization_config"] = quantization_config(fmt, group_size)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in _COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)


def dequantized_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """A quantized folder's weights as a float state dict (``...proj.weight`` fp32 again)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    tensors = load_file(folder / "model.safetensors")
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith((".qzeros", ".scales", ".g_idx")):
            continue
        if not name.endswith(".qweight"):
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
            continue
        prefix = name.removesuffix(".qweight")
        if qc["quant_method"] == "awq":
            weight = dequantize_awq(
                tensor, tensors[f"{prefix}.qzeros"], tensors[f"{prefix}.scales"], int(qc["group_size"])
            )
        else:
            weight = dequantize_gptq(
                tensor, tensors[f"{prefix}.qzeros"], tensors[f"{prefix}.scales"], tensors[f"{prefix}.g_idx"]
            )
        state[f"{prefix}.weight"] = weight
    return state
