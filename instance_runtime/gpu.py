"""Resource figures for /status: GPU memory from NVML, RAM from psutil.

NVML (nvidia-ml-py, module ``pynvml``) reads the driver directly: no torch, no CUDA context,
and it sees memory used by other processes (Flux) too, as nvidia-smi does.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import psutil

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_GIB = 1024 * 1024 * 1024


class GpuMonitor:
    """GPU memory in MiB summed over the GPUs this service may use; ``None`` without a GPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list[Any] | None = None
        self._available: bool | None = None

    def _init(self) -> list[Any]:
        if self._available is not None:
            return self._handles or []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            indices = _visible_indices(count)
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self._available = bool(self._handles)
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on a machine without GPU
            log.info("no GPU figures (NVML unavailable: %s)", exc)
            self._handles = []
            self._available = False
        return self._handles or []

    def memory_mib(self) -> tuple[int | None, int | None]:
        """(used, total) in MiB, or (None, None) where there is no GPU."""
        with self._lock:
            handles = self._init()
            if not handles:
                return None, None
            try:
                import pynvml

                infos = [pynvml.nvmlDeviceGetMemoryInfo(h) for h in handles]
            except Exception as exc:  # a driver hiccup must not take /status down
                log.warning("NVML memory query failed: %s", exc)
                return None, None
        return sum(int(i.used) for i in infos) // _MIB, sum(int(i.total) for i in infos) // _MIB


def _visible_indices(count: int) -> list[int]:
    """The physical GPUs named by CUDA_VISIBLE_DEVICES (numeric form), else all of them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return list(range(count)) if visible is None else []
    indices: list[int] = []
    for part in visible.split(","):
        part = part.strip()
        if not part.isdigit():  # UUID form: report every GPU rather than guess
            return list(range(count))
        if int(part) < count:
            indices.append(int(part))
    return indices


def process_ram_gb() -> float:
    """Resident memory of this service in GiB (weights on the CPU, tokenizer, Python)."""
    return round(psutil.Process().memory_info().rss / _GIB, 2)
