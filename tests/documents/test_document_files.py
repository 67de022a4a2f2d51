"""The SSM documents as files: shape, parameters, the shared prelude, shellcheck."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from asoba_deploy.core.steps import STEPS, instance_steps
from local.sandbox.documents import DOCUMENTS_DIR, document_content, document_names
from local.sandbox.validation import PLACEHOLDER, resolve_parameters, substitute

# Every instance step of the registry has its document, and no document is without a step.
EXPECTED = sorted(str(step.document) for step in instance_steps())
ROOT_DEFAULTS = {
    "ModelsRoot": "/opt/models",
    "RuntimeRoot": "/opt/asoba-inference",
    "UnitDir": "/etc/systemd/system",
    "EnvDir": "/etc/asoba-inference",
    "ProfileDir": "/etc/profile.d",
    "StateDir": "/var/lib/asoba-inference",
}
COMMON_START = "# --- common: strict mode, result line, failure line (identical in every document) ---"
COMMON_END = "# --- end common ---"


def script_of(name: str) -> str:
    step = document_content(name)["mainSteps"][-1]
    commands = step["inputs"]["runCommand"]
    return "\n".join(commands)


def test_the_nine_documents_are_there() -> None:
    assert document_names() == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_document_shape(name: str) -> None:
    # Given a document file
    content = document_content(name)
    # Then it is a 2.2 Command document whose steps are the registry's plugins: the downloads a
    # fresh image needs (each ending the document when it fails), then one runShellScript step
    # whose script asks for bash
    assert content["schemaVersion"] == "2.2"
    assert content["description"].strip()
    steps = content["mainSteps"]
    assert tuple(step["name"] for step in steps) == STEPS[name].plugins
    for fetch in steps[:-1]:
        assert fetch["action"] == "aws:downloadContent"
        assert (fetch["inputs"]["sourceType"], fetch["inputs"]["onFailure"]) == ("S3", "exit")
        assert fetch["inputs"]["destinationPath"].startswith("{{ RuntimeRoot }}/")
    assert steps[-1]["action"] == "aws:runShellScript"
    assert steps[-1]["inputs"]["timeoutSeconds"] == "{{ executionTimeout }}"
    script = script_of(name)
    assert script.splitlines()[0] == "#!/bin/bash"
    assert "set -Eeuo pipefail" in script
    assert not re.search(r"\beval\b", script)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_parameter_is_constrained_documented_and_used(name: str) -> None:
    content = document_content(name)
    parameters = content["parameters"]
    script = script_of(name)
    inputs = [str(step["inputs"]) for step in content["mainSteps"]]
    used = set(PLACEHOLDER.findall(script)) | {name for text in inputs for name in PLACEHOLDER.findall(text)}
    assert used == set(parameters), f"declared but unused or used but undeclared: {used ^ set(parameters)}"
    for parameter, spec in parameters.items():
        assert spec["type"] == "String", parameter
        assert spec.get("description", "").strip(), parameter
        assert ("allowedPattern" in spec) != ("allowedValues" in spec), parameter
        if "default" in spec:
            default = spec["default"]
            assert isinstance(default, str), f"{parameter}: quote the default so YAML keeps it a string"
            # the default itself passes the document's own constraint
            resolve_parameters({parameter: spec}, {parameter: [default]})
        if parameter in ROOT_DEFAULTS:
            assert spec["default"] == ROOT_DEFAULTS[parameter]
        # a parameter goes into the script only as a single-quoted assignment
        for line in script.splitlines():
            if "{{ " + parameter + " }}" in line and "timeoutSeconds" not in line:
                assert re.fullmatch(r"\s*[A-Z0-9_]+='\{\{ " + parameter + r" \}\}'", line), line


def test_the_common_prelude_is_identical_everywhere() -> None:
    blocks = {}
    for name in EXPECTED:
        script = script_of(name)
        start, end = script.index(COMMON_START), script.index(COMMON_END)
        blocks[name] = script[start:end]
    assert len(set(blocks.values())) == 1, "the common block drifted between documents"


def test_the_install_templates_only_use_placeholders_the_document_fills() -> None:
    script = script_of("install")
    filled = set(re.findall(r"line//(@[A-Z_]+@)/", script))
    templates = Path(DOCUMENTS_DIR.parent, "instance_runtime", "systemd")
    for template in templates.glob("*.template"):
        placeholders = set(re.findall(r"@[A-Z_]+@", template.read_text()))
        assert placeholders <= filled, f"{template.name}: {placeholders - filled} would stay unfilled"


def test_the_unit_template_carries_the_seed_settings() -> None:
    unit = Path(
        DOCUMENTS_DIR.parent, "instance_runtime", "systemd", "asoba-inference.service.template"
    ).read_text()
    for line in (
        "Restart=always",
        "RestartSec=10",
        "WorkingDirectory=@RUNTIME_ROOT@",
        "User=@SERVICE_USER@",
        "MemoryMax=@MEMORY_MAX@",
        "CPUQuota=@CPU_QUOTA@",
        "EnvironmentFile=@ENV_FILE@",
        "ExecStart=@RUNTIME_ROOT@/venv/bin/python -m instance_runtime",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines()
    install = document_content("install")["parameters"]
    assert install["ServiceUser"]["default"] == "ubuntu"
    assert install["MemoryMax"]["default"] == "32G"
    assert install["CpuQuota"]["default"] == "800%"


def test_the_env_template_names_match_the_runtime_settings() -> None:
    settings = Path(DOCUMENTS_DIR.parent, "instance_runtime", "settings.py")
    if not settings.is_file():
        pytest.skip("instance_runtime/settings.py is not written yet")
    fields = set(re.findall(r"^    ([a-z_]+): ", settings.read_text(), flags=re.MULTILINE))
    env = Path(DOCUMENTS_DIR.parent, "instance_runtime", "systemd", "env.template").read_text()
    names = {line.split("=", 1)[0] for line in env.splitlines() if "=" in line and not line.startswith("#")}
    runtime_names = {name for name in names if not name.startswith(("HF_", "TRANSFORMERS_", "PYTHON"))}
    assert {name.lower() for name in runtime_names} <= fields


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt install shellcheck)"
)
@pytest.mark.parametrize("name", EXPECTED)
def test_shellcheck_passes(name: str, tmp_path: Path) -> None:
    # Given the script as the agent would run it with the default parameter values
    content = document_content(name)
    values = {p: str(spec.get("default", "required-value")) for p, spec in content["parameters"].items()}
    script = substitute(script_of(name), values)
    path = tmp_path / f"{name}.sh"
    path.write_text(script)
    # When shellcheck reads it
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Then it finds nothing
    assert result.returncode == 0, result.stdout


def run_with_prelude(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = script_of("health-check")
    prelude = script[script.index(COMMON_START) : script.index(COMMON_END) + len(COMMON_END)]
    path = tmp_path / "script.sh"
    path.write_text(f"#!/bin/bash\n{prelude}\n{body}\n")
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=30, check=False)


def test_an_unexpected_failure_still_ends_with_a_json_line(tmp_path: Path) -> None:
    # Given a script whose fourth command fails without the script handling it
    result = run_with_prelude(
        'work="$(mktemp -d)"\n_cleanup+=("$work")\necho "$work"\nfalse\necho unreachable', tmp_path
    )
    # Then it exits non-zero, its last line says where, and its temporary folder is gone
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    failing_line = result.args[1] and Path(result.args[1]).read_text().splitlines().index("false") + 1
    assert json.loads(lines[-1]) == {"ok": False, "error": f"failed (exit 1) at line {failing_line}: false"}
    assert not Path(lines[0]).exists()


def test_fail_prints_one_line_and_escapes_it(tmp_path: Path) -> None:
    result = run_with_prelude('fail "quote \\" backslash \\\\ tab\tnewline\nend"', tmp_path)
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1
    assert json.loads(result.stdout) == {"ok": False, "error": 'quote " backslash \\ tab\tnewline\nend'}


def test_a_failure_inside_a_command_substitution_is_caught(tmp_path: Path) -> None:
    result = run_with_prelude('value="$(cat /nonexistent/file)"\necho "never $value"', tmp_path)
    assert result.returncode == 1
    error = json.loads(result.stdout.splitlines()[-1])["error"]
    assert error.startswith("failed (exit 1) at line")


@pytest.mark.parametrize("name", EXPECTED)
def test_a_script_needs_no_home_and_takes_the_agents_region(name: str) -> None:
    # The agent gives scripts no HOME and no AWS_REGION, only AWS_SSM_REGION_NAME
    script = script_of(name)
    assert not re.search(r"\$\{?HOME\b|(^|\s)~/", script), "the agent sets no HOME"
    for line in script.splitlines():
        if re.search(r"\bAWS_(DEFAULT_)?REGION\b", line):
            assert "AWS_SSM_REGION_NAME" in line or line.strip().startswith("#"), line
    if "aws s3" in script or "s5cmd" in script:  # the CLIs need a region
        assert 'export AWS_REGION="$AWS_SSM_REGION_NAME"' in script
