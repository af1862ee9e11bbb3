"""Reading config files: YAML, ``--set key=value`` overrides, top-level sections.

A config file holds the trainer's sections (data, model, train) and, for sweeps, the sweep's
own (name, storage, search, space, resources, mlflow). Every mistake is a ConfigError: one
line naming the file or key. Config files, cluster profiles and ``--set`` values are all read
by ``Loader``: YAML's safe subset, numbers as people write them (``1e-4``), no duplicate keys.
A sweep's folder keeps the document it was started with, which ``load_saved`` reads back.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path
from typing import Any

import yaml

from sweeps.record.layout import DEFAULT_STORAGE, SweepFolder
from trainers.config import SECTIONS, ConfigError, TrialConfig, trial_config, unknown_key_error
from trainers.rules import expanded, shown

SWEEP_SECTIONS = ("name", "storage", "search", "space", "resources", "mlflow")
TOP_LEVEL = (*SECTIONS, *SWEEP_SECTIONS)
MAX_CONFIG_BYTES = 1 << 20  # a config is a page of text; /dev/zero is not


class Loader(yaml.SafeLoader):
    """yaml.SafeLoader that reads ``1e-4`` as a number (YAML 1.1 wants ``1.0e-4``) and
    refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}  # key -> the line it was first given on
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader says so itself
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown(key)} (first at line {first})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, where: str) -> Any:
    """The YAML value in ``text``, or a ConfigError naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: not valid YAML{line}: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{where}: its YAML is nested too deeply to be a config") from None


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The YAML value in the regular, UTF-8, at most 1 MiB file ``path``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such {what}")
    if not path.is_file():  # a folder, a FIFO, /dev/zero: opening one may block or never end
        raise ConfigError(f"{path}: not a regular file; give a YAML {what}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
            f"save the {what} as UTF-8"
        ) from None
    return parse_yaml(text, str(path))


EMPTY_HINT = (
    "give a config of sections (data, model, train; a sweep's search and space too), e.g. "
    "configs/digits_asha.yaml"
)


def load_document(path: str | Path, empty: str = EMPTY_HINT) -> dict[str, Any]:
    """The YAML mapping in ``path``; a file with none (empty, or only comments) is refused,
    ``empty`` saying what it should hold."""
    doc = read_yaml(path)
    if doc is None:
        raise ConfigError(f"{path} is empty; {empty}")
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{path}: a config must be a YAML mapping of sections, not a list or value"
        )
    for key in doc:
        if key not in TOP_LEVEL:
            raise unknown_key_error(str(key), TOP_LEVEL)
    return doc


SAVED = "it should hold the sweep's config"  # the fix a damaged sweep.yaml's error names


def load_saved(name: str, storage: str | Path = DEFAULT_STORAGE) -> dict[str, Any]:
    """The config document a sweep was started with, for ``sweep resume NAME``: pointed at the
    folder where it was found, so a moved or renamed sweep goes on where it now lies."""
    files = SweepFolder.of(storage, name)
    if not files.config.exists():
        raise ConfigError(
            f"no sweep named {name} under {storage}/ ({files.config} is missing); `sweep status"
            f"{'' if str(storage) == DEFAULT_STORAGE else f' --storage {storage}'}` lists the "
            "sweeps there, --storage names another folder"
        )
    doc = saved_document(files)
    if not doc:
        raise ConfigError(f"{files.config} is empty; {SAVED}")
    return {**doc, "name": name, "storage": str(storage)}


def saved_document(folder: SweepFolder) -> dict[str, Any]:
    """The config document in a sweep's folder (sweep.yaml); a damaged one is a ConfigError
    naming it."""
    return load_document(folder.config, SAVED)


def save_document(folder: SweepFolder, doc: dict[str, Any]) -> None:
    """Write the config a sweep starts with into its folder, keys in the config's own order:
    the draws follow the order of the space's keys, so ``sweep resume`` reads them back in it
    and draws the same configurations under the same ids."""
    folder.config.write_text(yaml.safe_dump(doc, sort_keys=False))


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "search.type=grid"]`` to ``{"train.lr": 0.1, ...}`` (values are YAML)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like key=value, e.g. train.lr=0.1")
        out[key.strip()] = parse_yaml(raw, f"--set {key.strip()}")
    return out


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """The repeatable ``--set KEY=VALUE`` override of every command that reads a config."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )


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


def trial_config_with(sections: dict[str, Any], sets: dict[str, Any]) -> TrialConfig:
    """The validated TrialConfig of ``sections`` (data, model, train) with each dotted key of
    ``sets`` set: a trial's config from the fixed sections and its sampled values."""
    return trial_config(apply_sets(sections, sets))


def load(path: str | Path, sets: list[str] | None = None) -> dict[str, Any]:
    """Read ``path`` and apply ``--set`` overrides. A relative data.path, fixed or searched, is
    made absolute, from the directory the command runs in: trials run in Ray's trial folders,
    not there."""
    doc = apply_sets(load_document(path), parse_sets(sets or []))
    data, space = doc.get("data"), doc.get("space")
    if isinstance(data, dict) and "path" in data:
        data["path"] = _absolute(data["path"], "data.path")
    if isinstance(space, dict) and isinstance(searched := space.get("data.path"), dict):
        for kind, values in searched.items():
            if isinstance(values, list):
                searched[kind] = [_absolute(v, "space.data.path") for v in values]
    return doc


def _absolute(path: Any, key: str) -> Any:
    return str(expanded(path, key).absolute()) if isinstance(path, str) and path else path


def trainer_config(doc: dict[str, Any]) -> TrialConfig:
    """The validated trainer part (data, model, train) of a config document."""
    return trial_config({name: doc.get(name) for name in SECTIONS})  # (None: the defaults)
