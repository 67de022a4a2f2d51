"""Read the CDK context into the one configuration model (asoba_deploy.core.config)."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from asoba_deploy.core.config import DeployConfig

# The context keys are the configuration model's fields: nothing to keep in step.
CONTEXT_KEYS = tuple(DeployConfig.model_fields)


class ConfigError(Exception):
    """A context value is missing or malformed; the message names the key."""


def _coerce_numbers(raw: dict[str, Any]) -> dict[str, Any]:
    # -c poll_interval_seconds=2 arrives as a string
    out = dict(raw)
    for key in ("poll_interval_seconds", "safety_net_seconds", "validation_rate_minutes"):
        if isinstance(out.get(key), str) and re.fullmatch(r"[0-9]+", out[key]):
            out[key] = int(out[key])
    for key in ("link_gbps", "idle_stop_minutes", "step_overhead_seconds"):
        if isinstance(out.get(key), str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", out[key]):
            out[key] = float(out[key])
    return out


def load_config(get_context: Any) -> DeployConfig:
    """Build the config from a `node.try_get_context`-like getter, naming any bad key."""
    raw = {key: get_context(key) for key in CONTEXT_KEYS}
    raw = {key: value for key, value in raw.items() if value is not None}
    try:
        return DeployConfig.model_validate(_coerce_numbers(raw))
    except json.JSONDecodeError as error:
        raise ConfigError(f"context value is not valid JSON: {error}") from None
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(p) for p in item["loc"])
            if item["type"] == "missing":
                problems.append(f"context key '{key}': required (set it in cdk.json or with -c {key}=...)")
            else:
                problems.append(f"context key '{key}': {item['msg']} (got {item.get('input')!r})")
        raise ConfigError("; ".join(problems)) from None
