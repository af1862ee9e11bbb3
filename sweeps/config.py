"""Reading config files: YAML (safe_load), ``--set key=value`` overrides, top-level sections.

A config file holds the trainer's sections (data, model, train) and, for sweeps, the sweep's
own (name, storage, search, space, resources, mlflow). Every mistake is a ConfigError: one
line naming the file or key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from trainers.config import SECTIONS, ConfigError, TrialConfig, trial_config, unknown_key_error

SWEEP_SECTIONS = ("name", "storage", "search", "space", "resources", "mlflow")
TOP_LEVEL = (*SECTIONS, *SWEEP_SECTIONS)


def load_document(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{path}: a config must be a YAML mapping of sections, not a list or value"
        )
    for key in doc:
        if key not in TOP_LEVEL:
            raise unknown_key_error(str(key), TOP_LEVEL)
    return doc


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "search.type=grid"]`` to ``{"train.lr": 0.1, ...}`` (values are YAML)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like key=value, e.g. train.lr=0.1")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML") from None
    return out


def apply_sets(doc: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with each dotted key set; intermediate mappings are created."""
    doc = copy.deepcopy(doc)
    for dotted, value in sets.items():
        head, *rest = dotted.split(".")
        if head not in TOP_LEVEL:
            raise unknown_key_error(head, TOP_LEVEL)
        node = doc
        # space keys are themselves dotted trainer keys: space.train.lr -> space["train.lr"]
        parts = [head, ".".join(rest)] if head == "space" and rest else [head, *rest]
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {part} is not a mapping")
            node = child
        node[parts[-1]] = value
    return doc


def load(path: str | Path, sets: list[str] | None = None) -> dict[str, Any]:
    """Read ``path`` and apply ``--set`` overrides."""
    return apply_sets(load_document(path), parse_sets(sets or []))


def trainer_config(doc: dict[str, Any]) -> TrialConfig:
    """The validated trainer part (data, model, train) of a config document."""
    return trial_config({name: doc.get(name) or {} for name in SECTIONS})
