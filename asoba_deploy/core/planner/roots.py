"""Choosing the models root: the fastest candidate with room for the model.

collect-resources measures every candidate root of the context's `models_roots` (its device,
free bytes, a short sequential write probe). The plan takes, among the roots with room for the
bytes to transfer plus the disk reserve:
1. a root that already holds the whole model (nothing to transfer, no second copy on disk);
2. else the highest measured write rate (a root without a measurement ranks after every
   measured one), ties broken by the context's order.
No root with room: the plan does not fit, and shows the root with the most free space (the
closest) so the disk shortfall names it. A chosen root writing at or below gp3's 125 MiB/s
baseline is warned about: on a g5 the network brings 10 Gbps, five times that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asoba_deploy.core.manifest import Manifest
from asoba_deploy.core.planner.estimate import disk_estimate, plan_files
from asoba_deploy.core.planner.models import DiskEstimate, PlanFile
from asoba_deploy.core.policy import GIB, MIB, Policy
from asoba_deploy.core.snapshot import CachedModel, InstanceSnapshot, ModelsRootInfo

# gp3's baseline throughput, what a default EBS root volume writes (AWS EBS volume types:
# "a baseline throughput of 125 MiB/s" for gp3 at any size, unless more is provisioned).
GP3_BASELINE_BYTES_PER_S = 125 * MIB
# dd with O_DIRECT on a gp3 measures within a few per cent of its limit, either side.
BASELINE_TOLERANCE = 1.10


@dataclass(frozen=True)
class RootOption:
    """One candidate root, with the files the deployment needs there and the disk check."""

    path: str
    order: int  # position in the context's models_roots
    info: ModelsRootInfo | None  # None: an older snapshot that reports models_root only
    files: tuple[PlanFile, ...]
    stale: tuple[CachedModel, ...]
    disk: DiskEstimate

    @property
    def write_rate(self) -> int | None:
        return self.info.write_bytes_per_s if self.info is not None else None

    @property
    def read_rate(self) -> int | None:
        return self.info.read_bytes_per_s if self.info is not None else None

    @property
    def complete(self) -> bool:
        return self.disk.needed_bytes == 0


@dataclass(frozen=True)
class RootChoice:
    chosen: RootOption
    options: tuple[RootOption, ...]
    rule: str  # "only" | "complete" | "fastest" | "no-room"
    reason: str
    warnings: tuple[str, ...]


def rate_words(rate: int | None) -> str:
    if rate is None:
        return "write rate not measured"
    if rate >= GIB:
        return f"writes {rate / GIB:.1f} GiB/s measured"
    return f"writes {rate / MIB:.0f} MiB/s measured"


def _device_words(info: ModelsRootInfo | None) -> str:
    if info is None:
        return "device not reported"
    if info.kind == "nvme-instance-store":
        what = "NVMe instance store, emptied when the instance stops"
    elif info.kind == "ebs":
        volume = info.volume_id
        # Type and provisioned throughput need ec2:DescribeVolumes: not read from the instance.
        what = f"EBS{' ' + volume if volume else ''}, type and throughput not readable on the instance"
    else:
        what = f"{info.fstype or 'unknown'} on {info.device or 'an unknown device'}"
    return what


def _describe(option: RootOption) -> str:
    missing = "" if option.info is None or option.info.exists else ", not created yet"
    return (
        f"{option.path} ({_device_words(option.info)}{missing}; {option.disk.free_bytes / GIB:.1f} GiB free; "
        f"{rate_words(option.write_rate)})"
    )


def candidates(
    snapshot: InstanceSnapshot, policy: Policy
) -> list[tuple[str, ModelsRootInfo | None, int, str]]:
    """(path, measurement, free bytes, where its copies were looked for) of every candidate, in
    the context's order. A snapshot without candidates (an older collect-resources) gives the
    configured models root, with the free space and copies it reported for its own."""
    if snapshot.models_roots:
        return [(r.path.rstrip("/") or "/", r, r.free_bytes, r.path) for r in snapshot.models_roots]
    return [(policy.models_root.rstrip("/") or "/", None, snapshot.disk_free_bytes, snapshot.models_root)]


def _rank(option: RootOption) -> tuple[int, int, int]:
    rate = option.write_rate
    return (0 if rate is not None else 1, -(rate or 0), option.order)


def choose_root(manifests: Sequence[Manifest], snapshot: InstanceSnapshot, policy: Policy) -> RootChoice:
    """The models root for `manifests` (the model, and an adapter's base first)."""
    options: list[RootOption] = []
    for order, (path, info, free, cache_root) in enumerate(candidates(snapshot, policy)):
        files, stale = plan_files(manifests, snapshot, path, cache_root)
        options.append(
            RootOption(path, order, info, tuple(files), tuple(stale), disk_estimate(files, free, policy))
        )
    room = [o for o in options if o.disk.fits]
    need = options[0].disk.needed_bytes
    if not room:
        chosen = max(options, key=lambda o: (o.disk.free_bytes, -o.order))
        listed = "; ".join(_describe(o) for o in options)
        reason = (
            f"no models root has room for the model ({gib_words(need)} to transfer + "
            f"{gib_words(policy.disk_reserve_bytes)} reserve): {listed}; "
            f"{chosen.path} has the most free space"
        )
        return RootChoice(chosen, tuple(options), "no-room", reason, ())
    complete = [o for o in room if o.complete]
    if complete:
        chosen, rule = complete[0], "complete"
        reason = f"{_describe(chosen)}: it already holds the whole model, nothing to transfer"
    else:
        chosen = min(room, key=_rank)
        rule = "only" if len(options) == 1 else "fastest"
        if rule == "only":
            reason = f"{_describe(chosen)}: the only models root"
        else:
            others = [o for o in options if o is not chosen]
            reason = (
                f"{_describe(chosen)}: the fastest models root with room for "
                f"{gib_words(chosen.disk.needed_bytes)} + {gib_words(policy.disk_reserve_bytes)} reserve, "
                "over " + "; ".join(_describe(o) + ("" if o.disk.fits else ", no room") for o in others)
            )
    warnings: list[str] = []
    rate = chosen.write_rate
    if rate is not None and rate <= GP3_BASELINE_BYTES_PER_S * BASELINE_TOLERANCE:
        faster = "" if len(options) > 1 else " (the only candidate)"
        seconds = chosen.disk.needed_bytes / rate if rate > 0 else float("inf")
        link_s = chosen.disk.needed_bytes / policy.link_bytes_per_s
        warnings.append(
            f"models root {chosen.path}{faster} {rate_words(rate)}, at or below gp3's 125 MiB/s "
            f"baseline: writing {gib_words(chosen.disk.needed_bytes)} takes ~{seconds:.0f} s where "
            f"the {policy.link_bytes_per_s * 8 / 1e9:g} Gbps link brings it in ~{link_s:.0f} s; add the "
            "NVMe instance store's mount to models_roots (or provision the volume's throughput)"
        )
    return RootChoice(chosen, tuple(options), rule, reason, tuple(warnings))


def gib_words(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
