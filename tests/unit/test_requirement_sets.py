"""The runtime's requirement sets per engine, and the plan's statement of what the install downloads.

Given the sets the planner keeps (core.requirement_sets) and the files the runtime bundle ships,
they are the same lines, normalized and hashed as the install document does it; and given an
instance that reports the venvs install built, the plan says what the first install of the
chosen engine's venv downloads, or that it downloads nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from asoba_deploy.core.engines import ENGINES, Engine
from asoba_deploy.core.planner import Plan
from asoba_deploy.core.requirement_sets import (
    REQUIREMENT_FILES,
    REQUIREMENTS,
    package_name,
    requirement_lines,
    requirements_sha256,
)
from asoba_deploy.core.snapshot import InstanceSnapshot, RuntimePython, RuntimeVenv
from tests.unit.planner_support import seed_snapshot
from tests.unit.test_engines import plan_of, smollm2, with_capabilities

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "ssm_documents" / "install.yaml"
TRANSFORMERS_PYTHON = RuntimePython(
    python="/opt/asoba-inference/venv/bin/python", source="runtime-venv", torch="2.7.1", bitsandbytes="0.50.2"
)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_planners_sets_are_the_bundles_files(engine: Engine) -> None:
    shipped = (REPO / "instance_runtime" / REQUIREMENT_FILES[engine]).read_text()
    assert requirement_lines(shipped) == list(REQUIREMENTS[engine]), (
        f"instance_runtime/{REQUIREMENT_FILES[engine]} changed: update REQUIREMENTS[{engine!r}] in "
        "asoba_deploy/core/requirement_sets.py (the plan's download statement reads it)"
    )
    # torch is BasePython's, and the vllm set never brings torchvision & co
    names = {package_name(line).lower() for line in REQUIREMENTS[engine]}
    assert not names & {"torch", "torchvision", "torchaudio", "torchcodec"}


def test_the_hash_is_the_install_documents(tmp_path: Path) -> None:
    # Given a requirement file with comments, blanks, CRLF and an inline comment
    text = "# pinned\r\nfastapi==0.163.2  # the API\r\n\r\n   uvicorn==0.54.0\t\n#x\nurl#frag==1\n"
    # When the install document's own sed and sha256sum read it
    line = next(x for x in INSTALL.read_text().splitlines() if x.strip().startswith('req_lines="$(sed '))
    sed = re.search(r"sed (.*) \"\$req_file\"", line)
    assert sed is not None
    script = (
        f'req_lines="$(sed {sed.group(1)} "$1" | grep -v \'^$\' || true)"\n'
        "printf '%s\\n' \"$req_lines\"\n"
        "printf '%s' \"${req_lines}${req_lines:+$'\\n'}\" | sha256sum | awk '{ print $1 }'\n"
    )
    sample = tmp_path / "requirements.txt"
    sample.write_bytes(text.encode())
    out = subprocess.run(
        ["bash", "-c", script, "sh", str(sample)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # Then it keeps the lines this module keeps, and hashes them alike
    lines = requirement_lines(text)
    assert lines == ["fastapi==0.163.2", "uvicorn==0.54.0", "url#frag==1"]
    assert out == [*lines, requirements_sha256(lines)]
    assert requirements_sha256([]) == requirements_sha256(requirement_lines("# nothing\n\n"))


def venv(engine: Engine, *, current: bool = True, sha: str | None = None) -> RuntimeVenv:
    return RuntimeVenv(
        hash="0123456789abcdef",
        engine=engine,
        requirements_sha256=sha or requirements_sha256(REQUIREMENTS[engine]),
        current=current,
    )


def planned(snapshot: InstanceSnapshot) -> Plan:
    return plan_of(smollm2(), snapshot)


def download_reason(result: Plan) -> str:
    found = [r for r in result.reasons if "downloads" in r or "downloading" in r]
    assert len(found) == 1, result.reasons
    return found[0]


def test_a_first_install_of_the_engine_states_its_download() -> None:
    # Given the seed's A10G whose runtime has vLLM, and only a transformers venv on the instance
    snapshot = with_capabilities(seed_snapshot()).model_copy(
        update={"runtime_venvs": [venv("transformers")], "runtime_venvs_total": 1}
    )
    # When SmolLM2 is planned
    result = planned(snapshot)
    # Then the plan names vLLM and the vllm set's packages as the first install's download
    assert result.engine == "vllm"
    assert result.install_download == list(REQUIREMENTS["vllm"])
    reason = download_reason(result)
    assert "no venv of the vllm engine's requirements-vllm.txt yet" in reason
    assert f"downloading {len(REQUIREMENTS['vllm'])} packages (fastapi==0.136.3, " in reason
    assert "transformers==5.19.0" in reason
    # And it round-trips as the execution carries it
    assert Plan.model_validate(result.model_dump(mode="json")).install_download == result.install_download


def test_a_venv_of_the_engine_and_its_set_downloads_nothing() -> None:
    # Given a CPU instance (transformers) that has the transformers venv of today's set
    snapshot = seed_snapshot(gpus=[], runtime_python=TRANSFORMERS_PYTHON).model_copy(
        update={"runtime_venvs": [venv("vllm", current=False), venv("transformers")]}
    )
    result = planned(snapshot)
    assert result.engine == "transformers"
    assert result.install_download == []
    assert "install reuses it, downloads nothing" in download_reason(result)


def test_a_venv_of_another_set_or_no_report_means_a_download() -> None:
    cpu = seed_snapshot(gpus=[], runtime_python=TRANSFORMERS_PYTHON)
    # a transformers venv of an older requirement set: install builds a new one
    stale = cpu.model_copy(update={"runtime_venvs": [venv("transformers", sha="0" * 64)]})
    assert planned(stale).install_download == list(REQUIREMENTS["transformers"])
    # an instance whose collect-resources does not report venvs: the download is stated as possible
    unreported = planned(cpu)
    assert cpu.runtime_venvs is None
    assert unreported.install_download == list(REQUIREMENTS["transformers"])
    assert "does not report its runtime venvs" in download_reason(unreported)


def test_older_plans_and_snapshots_read_without_the_new_fields() -> None:
    result = planned(seed_snapshot(gpus=[], runtime_python=TRANSFORMERS_PYTHON))
    data = result.model_dump(mode="json")
    del data["install_download"]
    assert Plan.model_validate(data).install_download == []
    reported = seed_snapshot().model_dump(mode="json")
    assert InstanceSnapshot.model_validate(reported).runtime_venvs is None
