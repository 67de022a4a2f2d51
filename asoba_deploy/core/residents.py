"""Several models resident on one instance: each one's unit, env folder, state folder and port.

The seed's unit `asoba-inference.service` stays the primary model's (env `EnvDir/env`, state
`StateDir/previous`, port 8001 beside Flux). A model deployed with `"resident": "keep"` while the
primary serves another one runs as `asoba-inference@<model>.service`: its env file is
`EnvDir/models/<model>/env`, its rollback record `StateDir/models/<model>/previous`, its MCP
discovery profile `ProfileDir/asoba-inference@<model>.sh`, and its port the first free one from
8002 upward. The SSM documents take these as their ServiceUnit / EnvDir / StateDir parameters,
so every document serves a resident model as it serves the primary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from asoba_deploy.core.config import RUNTIME_UNIT, InstanceRoots

RESIDENT_UNIT_PREFIX = "asoba-inference@"
UNIT_SUFFIX = ".service"
# Where the resident models' env and state folders live under EnvDir / StateDir.
RESIDENTS_FOLDER = "models"
# The first port a resident model beside the primary is placed on (the primary has the seed's).
FIRST_RESIDENT_PORT = 8002
LAST_PORT = 65535

_RESIDENT_UNIT = re.compile(r"^asoba-inference@([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.service$")

Resident = str  # "replace" | "keep" (core.contracts)


def resident_unit(model: str) -> str:
    """The unit of a model resident beside the primary."""
    return f"{RESIDENT_UNIT_PREFIX}{model}{UNIT_SUFFIX}"


def is_runtime_unit(unit: str) -> bool:
    """The primary's unit or a resident model's."""
    return unit == RUNTIME_UNIT or _RESIDENT_UNIT.fullmatch(unit) is not None


def model_of_unit(unit: str) -> str | None:
    """The model a resident unit is named for (None for the primary and any other unit)."""
    found = _RESIDENT_UNIT.fullmatch(unit)
    return found.group(1) if found else None


@dataclass(frozen=True)
class UnitRoots:
    """The folders one runtime unit's documents work in."""

    unit: str
    env_dir: str
    state_dir: str

    @property
    def primary(self) -> bool:
        return self.unit == RUNTIME_UNIT


def unit_roots(roots: InstanceRoots, unit: str) -> UnitRoots:
    """The env and state folders of `unit` (the primary's are the roots themselves)."""
    model = model_of_unit(unit)
    if unit == RUNTIME_UNIT or model is None:
        return UnitRoots(unit, roots.env_dir, roots.state_dir)
    return UnitRoots(
        unit,
        f"{roots.env_dir.rstrip('/')}/{RESIDENTS_FOLDER}/{model}",
        f"{roots.state_dir.rstrip('/')}/{RESIDENTS_FOLDER}/{model}",
    )


def free_port(taken: Iterable[int], first: int = FIRST_RESIDENT_PORT) -> int | None:
    """The first port from `first` upward that nothing holds (None: none left)."""
    held = set(taken)
    return next((port for port in range(first, LAST_PORT + 1) if port not in held), None)
