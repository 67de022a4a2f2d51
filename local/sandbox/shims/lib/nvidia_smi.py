"""The nvidia-smi stand-in: the GPU of gpu.json, with the memory that running units claim."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import SandboxError, pid_alive, read_gpu_config, read_state, sandbox_root

GPU_FIELDS = {
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "driver_version",
    "compute_cap",
    "count",
}
APP_FIELDS = {"pid", "used_memory", "used_gpu_memory", "process_name", "name", "gpu_uuid"}
_MIB_FIELDS = {"memory.total", "memory.used", "memory.free", "used_memory", "used_gpu_memory"}


def compute_apps(root: Path) -> list[tuple[int, int]]:
    """(pid, MiB) for every unit that holds GPU memory; a stopped unit may hold it a while longer."""
    apps: list[tuple[int, int]] = []
    claims = read_gpu_config(root).get("claims", {})
    now = time.time()
    for unit, claim in sorted(claims.items()):
        mib = int(claim.get("mib", 0))
        state = read_state(root, unit)
        pid = int(state.get("main_pid") or 0)
        if pid_alive(pid):
            apps.append((pid, mib))
            continue
        last = int(state.get("last_main_pid") or 0)
        exited = state.get("exited_at")
        linger = claim.get("linger_s", 0)
        if last and exited is not None and (linger is None or now < float(exited) + float(linger)):
            apps.append((last, mib))
    return apps


def _csv(rows: list[list[tuple[str, object]]], header: bool, units: bool) -> str:
    out = []
    if header and rows:
        out.append(", ".join(f"{name} [MiB]" if name in _MIB_FIELDS else name for name, _ in rows[0]))
    for row in rows:
        cells = []
        for name, value in row:
            cells.append(f"{value} MiB" if name in _MIB_FIELDS and units else str(value))
        out.append(", ".join(cells))
    return "\n".join(out)


def main(argv: list[str]) -> int:
    try:
        root = sandbox_root()
    except SandboxError as error:
        print(str(error), file=sys.stderr)
        return 9
    config = read_gpu_config(root)
    gpus = config.get("gpus", [])
    if not gpus:
        print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
        return 9
    apps = compute_apps(root)
    used = sum(mib for _, mib in apps) + int(config.get("baseline_used_mib", 0))
    query_gpu = query_apps = None
    header, units = True, True
    for arg in argv:
        if arg.startswith("--query-gpu="):
            query_gpu = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--query-compute-apps="):
            query_apps = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--format="):
            parts = arg.split("=", 1)[1].split(",")
            header = "noheader" not in parts
            units = "nounits" not in parts
        elif arg in ("-L", "--list-gpus"):
            for gpu in gpus:
                print(f"GPU {gpu['index']}: {gpu['name']} (UUID: {gpu['uuid']})")
            return 0
    if query_gpu is not None:
        # gpu.json's "unsupported_fields" stand for an older driver's (compute_cap came with 510)
        unsupported = set(config.get("unsupported_fields", []))
        bad = [f for f in query_gpu if f not in GPU_FIELDS or f in unsupported]
        if bad:
            print(f'Field "{bad[0]}" is not a valid field to query.\n')
            return 2
        rows = []
        for gpu in gpus:
            total = int(gpu["memory_total_mib"])
            gpu_used = used if int(gpu["index"]) == 0 else 0
            values = {
                "index": gpu["index"],
                "name": gpu["name"],
                "uuid": gpu["uuid"],
                "memory.total": total,
                "memory.used": gpu_used,
                "memory.free": max(total - gpu_used, 0),
                "utilization.gpu": 0,
                "driver_version": config.get("driver_version", "535.183.01"),
                # gpu.json may name it; the default is an A10G's (Ampere, sm_86)
                "compute_cap": gpu.get("compute_cap", "8.6"),
                "count": len(gpus),
            }
            rows.append([(f, values[f]) for f in query_gpu])
        text = _csv(rows, header, units)
        if text:
            print(text)
        return 0
    if query_apps is not None:
        bad = [f for f in query_apps if f not in APP_FIELDS]
        if bad:
            print(f'Field "{bad[0]}" is not a valid field to query.\n')
            return 2
        rows = []
        for pid, mib in apps:
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                name = "[Not Found]"
            values = {
                "pid": pid,
                "used_memory": mib,
                "used_gpu_memory": mib,
                "process_name": name,
                "name": name,
                "gpu_uuid": gpus[0]["uuid"],
            }
            rows.append([(f, values[f]) for f in query_apps])
        if header and not rows:
            rows_text = ", ".join(f"{f} [MiB]" if f in _MIB_FIELDS else f for f in query_apps)
            print(rows_text)
            return 0
        text = _csv(rows, header, units)
        if text:
            print(text)
        return 0
    for gpu in gpus:
        print(f"| {gpu['index']}  {gpu['name']:<20} | {used}MiB / {gpu['memory_total_mib']}MiB |")
    for pid, mib in apps:
        print(f"|   GPU {gpus[0]['index']}   PID {pid}   C   {mib}MiB |")
    return 0
