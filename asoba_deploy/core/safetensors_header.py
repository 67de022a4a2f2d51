"""Safetensors headers read with two ranged GETs, never the weights.

A safetensors file is: 8 bytes little-endian u64 N, then N bytes of JSON
(`{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`),
then the tensor data. `read_header` asks for bytes 0-7, then exactly bytes 8..8+N-1: it
never reads past the header.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from asoba_deploy.core.errors import ModelNotFound
from asoba_deploy.core.s3 import S3Reader

# The format's own limit on the header (safetensors refuses larger ones).
MAX_HEADER_BYTES = 100_000_000

# Bits per element of each safetensors dtype.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a header (plain dataclass: a MoE header holds ~20,000 of them)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    key: str
    file_bytes: int
    header_bytes: int
    data_bytes: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]


def parse_header(key: str, raw: bytes, file_bytes: int) -> SafetensorsHeader:
    """Parse the JSON header of `key` (the N bytes after the length prefix)."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelNotFound(f"{key}: safetensors header is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ModelNotFound(f"{key}: safetensors header is not a JSON object")
    metadata_raw = document.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in metadata_raw.items()} if isinstance(metadata_raw, dict) else {}
    tensors: list[TensorInfo] = []
    data_end = 0
    for name, entry in document.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelNotFound(f"{key}: tensor {name!r} has a malformed header entry") from None
        if end < begin or begin < 0:
            raise ModelNotFound(f"{key}: tensor {name!r} has data_offsets {begin}..{end}")
        bits = DTYPE_BITS.get(dtype)
        if bits is not None and math.ceil(math.prod(shape) * bits / 8) != end - begin:
            raise ModelNotFound(
                f"{key}: tensor {name!r} ({dtype} {list(shape)}) spans {end - begin} bytes, "
                "which does not match its shape"
            )
        tensors.append(TensorInfo(name=name, dtype=dtype, shape=shape, nbytes=end - begin))
        data_end = max(data_end, end)
    header_bytes = len(raw)
    if 8 + header_bytes + data_end > file_bytes:
        raise ModelNotFound(
            f"{key}: the header describes {8 + header_bytes + data_end} bytes but the object has "
            f"{file_bytes} (truncated upload?)"
        )
    return SafetensorsHeader(
        key=key,
        file_bytes=file_bytes,
        header_bytes=header_bytes,
        data_bytes=data_end,
        tensors=tuple(tensors),
        metadata=metadata,
    )


def read_header_length(reader: S3Reader, key: str, file_bytes: int) -> int:
    """The JSON header's length N, from bytes 0-7. The format leaves no holes and nothing after
    the last tensor, so the file's tensor data is exactly file_bytes - 8 - N."""
    if file_bytes < 8:
        raise ModelNotFound(f"{key}: {file_bytes} bytes is too small for a safetensors file")
    (length,) = struct.unpack("<Q", reader.read_range(key, 0, 8))
    if length > MAX_HEADER_BYTES or 8 + length > file_bytes:
        raise ModelNotFound(f"{key}: header length {length} is not plausible for a {file_bytes} byte file")
    return int(length)


def read_header_json(reader: S3Reader, key: str, length: int, file_bytes: int) -> SafetensorsHeader:
    """The header of `key` whose length `read_header_length` gave: exactly bytes 8..8+N-1."""
    return parse_header(key, reader.read_range(key, 8, length), file_bytes)


def read_header(reader: S3Reader, key: str, file_bytes: int) -> SafetensorsHeader:
    """Read one file's header: bytes 0-7 (length), then exactly the JSON header."""
    return read_header_json(reader, key, read_header_length(reader, key, file_bytes), file_bytes)
