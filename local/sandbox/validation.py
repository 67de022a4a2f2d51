"""What SSM does with a Command document's parameters before anything runs.

``resolve_parameters`` checks the values a SendCommand carries against the document's parameter
definitions (unknown names, required values, type, allowedValues, allowedPattern) and returns
the value of every parameter, defaults included; ``substitute`` replaces ``{{ Name }}`` in the
step inputs. SSM matches ``allowedPattern`` against the whole value (AWS-RunShellScript's own
unanchored executionTimeout pattern only works that way), which is ``re.fullmatch`` here.
"""

from __future__ import annotations

import re
from typing import Any

from moto.ssm.exceptions import SSMException

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
MAX_SHOWN = 60


class InvalidParameters(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidParameters", message)


def _shown(value: str) -> str:
    """A refused value, safe to echo: escaped and cut short."""
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(value)} characters)"


def _check_one(name: str, spec: dict[str, Any], value: str) -> None:
    allowed = spec.get("allowedValues")
    if allowed is not None and value not in [str(v) for v in allowed]:
        raise InvalidParameters(
            f'Parameter "{name}" failed to satisfy constraint: value "{_shown(value)}" '
            f"is not one of the allowed values {[str(v) for v in allowed]}."
        )
    pattern = spec.get("allowedPattern")
    if pattern is not None and re.fullmatch(pattern, value) is None:
        raise InvalidParameters(
            f'Parameter "{name}" failed to satisfy constraint: value "{_shown(value)}" '
            f"does not match the allowed pattern {pattern}."
        )


def resolve_parameters(definitions: dict[str, Any] | None, given: dict[str, Any] | None) -> dict[str, str]:
    """Validate ``given`` (SendCommand's Parameters: name -> list of strings) as SSM does."""
    definitions = definitions or {}
    given = given or {}
    for name in given:
        if name not in definitions:
            raise InvalidParameters(f'Parameter "{name}" is not defined in the document.')
    resolved: dict[str, str] = {}
    for name, spec in definitions.items():
        spec = spec or {}
        kind = spec.get("type", "String")
        values = given.get(name)
        if isinstance(values, str):
            values = [values]
        if not values:
            if "default" not in spec:
                raise InvalidParameters(f'Parameter "{name}" is required but no value was provided.')
            default = spec["default"]
            if isinstance(default, list):
                resolved[name] = "\n".join(str(v) for v in default)
            elif isinstance(default, bool):
                resolved[name] = "true" if default else "false"
            else:
                resolved[name] = str(default)
            continue
        if kind == "StringList":
            for value in values:
                _check_one(name, spec, str(value))
            resolved[name] = "\n".join(str(v) for v in values)
            continue
        if len(values) != 1:
            raise InvalidParameters(
                f'Parameter "{name}" of type {kind} takes exactly one value, got {len(values)}.'
            )
        value = str(values[0])
        if kind == "Integer" and re.fullmatch(r"-?[0-9]+", value) is None:
            raise InvalidParameters(f'Parameter "{name}" must be an Integer, got "{_shown(value)}".')
        if kind == "Boolean" and value not in ("true", "false"):
            raise InvalidParameters(f'Parameter "{name}" must be true or false, got "{_shown(value)}".')
        _check_one(name, spec, value)
        resolved[name] = value
    return resolved


def substitute(value: Any, parameters: dict[str, str]) -> Any:
    """Replace ``{{ Name }}`` in every string of a step's inputs; unknown names stay as written."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: parameters.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [substitute(item, parameters) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, parameters) for key, item in value.items()}
    return value
