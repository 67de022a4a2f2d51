"""LoRA adapter folders: which base each names, and the model ids of ADAPTERS (pure Python, so
both engines use it, the vLLM venv included)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from instance_runtime.errors import ConfigurationError
from instance_runtime.serving import ServedModel
from instance_runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)


def _named_base(adapter_path: Path, label: str) -> str:
    """adapter_config.json's base_model_name_or_path ("" when it names none)."""
    try:
        config = json.loads((adapter_path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{label}: adapter_config.json is unreadable: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigurationError(f"{label}: adapter_config.json is not a JSON object")
    return str(config.get("base_model_name_or_path") or "")


def _base_candidates(adapter_path: Path, named: str) -> list[Path]:
    # As written by peft (an absolute path), relative to the adapter, or a sibling folder named
    # like the tail of a hub id or bucket prefix.
    return [Path(named), adapter_path / named, adapter_path.parent / Path(named).name] if named else []


def read_adapter(model_path: Path, base_override: Path | None) -> Path | None:
    """The base model folder when ``model_path`` is a LoRA adapter, else None."""
    adapter_config = model_path / "adapter_config.json"
    if not adapter_config.is_file():
        return None
    if base_override is not None:
        if not base_override.is_dir():
            raise ConfigurationError(f"BASE_MODEL_PATH {base_override} is not a folder")
        return base_override
    named = _named_base(model_path, f"MODEL_PATH {model_path}")
    for candidate in _base_candidates(model_path, named):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigurationError(
        f"{model_path} is a LoRA adapter whose base model {named!r} is not a local folder; "
        "set BASE_MODEL_PATH to the base model's folder"
    )


def check_extra_adapter(name: str, path: Path, base_path: Path) -> None:
    """Refuse an ADAPTERS entry that is not a LoRA adapter of the base served here."""
    label = f"ADAPTERS entry {name}={path}"
    if not (path / "adapter_config.json").is_file():
        raise ConfigurationError(f"{label}: no adapter_config.json there, so it is not a LoRA adapter folder")
    named = _named_base(path, label)
    if not named:
        # Nothing to compare; loading it still fails on a base of other shapes.
        log.warning("%s: adapter_config.json names no base model; assuming %s", label, base_path)
        return
    base = base_path.resolve()
    same_folder = any(c.resolve() == base for c in _base_candidates(path, named) if c.is_dir())
    # A hub id or bucket prefix whose tail is the base's folder name (the sync keeps that name,
    # lower-cased as the planner resolves a hub id to a bucket folder).
    if not same_folder and Path(named).name.lower() != base.name.lower():
        raise ConfigurationError(
            f"{label}: its adapter_config.json names the base {named!r}, but the base served here is "
            f"{base_path}; every adapter in ADAPTERS must be trained on that base"
        )


def served_names(
    settings: RuntimeSettings, weights_path: Path, main_adapter: bool, extra: Mapping[str, Path]
) -> tuple[list[ServedModel], dict[str, str | None]]:
    """The OpenAI model ids with ADAPTERS, and the peft adapter each selects (None: the bare base).

    Peft's adapter names are module keys (no dots allowed), so served names map to keys of ours.
    """
    main = settings.served_model_name
    base = weights_path.resolve().name if main_adapter else main
    if main_adapter and main == base:
        raise ConfigurationError(
            f"MODEL_NAME {main!r} is also the base's folder name; with ADAPTERS the base is served "
            "under its folder name, so give the adapter in MODEL_PATH another MODEL_NAME"
        )
    served = [
        ServedModel(main, parent=base, root=str(settings.model_path)) if main_adapter else ServedModel(main)
    ]
    keys: dict[str, str | None] = {main: "adapter0" if main_adapter else None}
    if main_adapter:
        served.append(ServedModel(base))
        keys[base] = None
    for name, path in extra.items():
        if name in keys:
            taken = "the base model" if keys[name] is None else "MODEL_NAME"
            raise ConfigurationError(f"ADAPTERS entry {name}={path}: the name {name!r} is already {taken}'s")
        served.append(ServedModel(name, parent=base, root=str(path)))
        keys[name] = f"adapter{len(keys)}"
    return served, keys
