"""Rules as data: what each config key accepts, checked with one message template.

One ``Rule`` per key (a type, optional bounds, names or a pattern), in the scikit-learn
``_param_validation`` style. The trainer's keys (trainers/config.py), the sweep's
(sweeps/spec/sweep.py) and a cluster profile's (sweeps/slurm/submit.py) are tables of these, so
every mistake reads ``<key> must be <what is allowed>; got <value>``, on one line. Pure Python: no
torch, Ray or MLflow, so a login node checks a config cheaply.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KINDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def one_line(text: str) -> str:
    """``text`` with every control character (a newline in a key, say) written as an escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(value: Any, limit: int = 80) -> str:
    """A value as a message quotes it: its repr, on one line, cut to ``limit`` characters."""
    text = one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expanded(path: str | Path, key: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; a ConfigError naming ``key`` when
    that home directory is unknown here (pathlib raises RuntimeError)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise ConfigError(
            f"{key}: {path} names a home directory this machine does not know; give the path "
            "in full"
        ) from None


class ConfigError(ValueError):
    """A user mistake in a config, an override or an input file; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def is_int(v: Any) -> bool:
    """An integer that is not a bool (YAML's true is an int to Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _number(x: float) -> str:
    return str(x) if is_int(x) else f"{x:g}"


@dataclass(frozen=True)
class Rule:
    """What one key accepts, and what it means (``doc``, for docs/config.md)."""

    kind: type  # int, float (ints widened), bool, str, list or dict
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None  # a str must fullmatch it
    optional: bool = False  # None (YAML's null) allowed
    items: Rule | None = None  # list: each element's rule; dict: each value's
    keys: Rule | None = None  # dict: each key's rule
    words: tuple[str, ...] = ()  # strings taken besides values of ``kind``, e.g. "auto"
    what: str = ""  # how to say what is allowed, where the generated words would be a regex
    doc: str = ""

    def describe(self) -> str:
        """What is allowed, in the words of the message: 'a number in (0, 1)'."""
        if self.what:
            return self.what
        if self.choices:
            return "one of " + ", ".join(self.choices)
        text = _KINDS[self.kind]
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text += f" in {lo}{_number(self.low)}, {_number(self.high)}{hi}"
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {_number(self.low)}"
        elif self.high is not None:
            text += f" {'<' if self.high_open else '<='} {_number(self.high)}"
        if self.pattern is not None:
            text += f" matching {self.pattern}"
        text += "".join(f" or {word}" for word in self.words)
        return text + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> tuple[bool, Any]:
        """(whether the value is allowed, the value as the program uses it)."""
        if value is None:
            return self.optional, value
        if isinstance(value, str) and value in self.words:
            return True, value
        if self.kind is float and is_int(value):
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float
                return False, value
        ok = isinstance(value, self.kind) and (self.kind is bool or not isinstance(value, bool))
        if ok and self.kind is float:
            ok = math.isfinite(value)
        if ok and self.choices:
            ok = value in self.choices
        if ok and self.pattern is not None:
            ok = re.fullmatch(self.pattern, value) is not None
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if ok and self.items is not None:
            elements = value.values() if self.kind is dict else value
            ok = all(self.items.accepts(v)[0] for v in elements)
        if ok and self.keys is not None:
            ok = all(self.keys.accepts(k)[0] for k in value)
        return ok, value

    def check(self, key: str, value: Any) -> Any:
        """The value (ints widened to float where a number is asked), or a ConfigError."""
        ok, value = self.accepts(value)
        if not ok:
            raise ConfigError(f"{key} must be {self.describe()}; got {shown(value)}")
        return value

    def invalid_values(self) -> list[Any]:
        """One value breaking each of this rule's constraints: the tests' table of mistakes."""
        wrong_type = {str: 1, bool: "yes", list: "x", dict: ["x"]}.get(self.kind, "x")
        out = [wrong_type] + ([] if self.optional else [None])
        if self.kind in (int, float):
            out += [True]  # YAML's true is no number
        if self.kind is float:
            out += [math.nan, math.inf]
        if self.choices:
            out += ["nope"]
        if self.pattern is not None:
            out += ["x\ny", " "]  # a newline, a blank
        step = 1 if self.kind is int else 0.5
        if self.low is not None:
            out += [self.low if self.low_open else self.low - step]
        if self.high is not None:
            out += [self.high if self.high_open else self.high + step]
        if self.items is not None:
            bad = [v for v in self.items.invalid_values() if v is not None]
            out += [[v] for v in bad] if self.kind is list else [{"x": v} for v in bad]
        if self.keys is not None:
            out += [{k: 1} for k in self.keys.invalid_values() if isinstance(k, str)]
        return [v for v in out if not self.accepts(v)[0]]


def unknown_key_error(key: str, known: Iterable[str]) -> ConfigError:
    """One line for a misspelt key, suggesting the nearest known one."""
    known, key = list(known), one_line(str(key))
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown key {key}{hint}")


def check_mapping(name: str, given: Any, rules: dict[str, Rule]) -> dict[str, Any]:
    """Validate a section's mapping against ``rules`` (keyed ``name.key``); the checked
    values by their short keys."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ConfigError(f"{name} must be a mapping of keys to values; got {shown(given)}")
    out = {}
    for key, value in given.items():
        dotted = f"{name}.{key}"
        if dotted not in rules:
            raise unknown_key_error(dotted, [k for k in rules if k.startswith(f"{name}.")])
        out[str(key)] = rules[dotted].check(dotted, value)
    return out


@dataclass(frozen=True)
class Together:
    """A rule over several keys, e.g. val_fraction + test_fraction < 1."""

    keys: tuple[str, ...]
    ok: Callable[..., bool]  # the keys' values, in order -> allowed?
    message: str  # formatted with the values in order: {0}, {1}, ...
    doc: str = ""

    def check(self, flat: dict[str, Any], where: str = "") -> None:
        values = [flat[k] for k in self.keys]
        if not self.ok(*values):
            raise ConfigError(self.message.format(*values) + where)


def markdown_table(rules: dict[str, Rule], defaults: dict[str, Any]) -> str:
    """The rows of docs/config.md for these rules: key, default, allowed, meaning."""

    def default(key: str) -> str:
        value = defaults.get(key)
        if value is None:
            return "none"
        if isinstance(value, bool):
            return str(value).lower()
        return f"`{value}`" if isinstance(value, str) else _number(value)

    rows = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for key, rule in rules.items():
        rows.append(f"| `{key}` | {default(key)} | {rule.describe()} | {rule.doc} |")
    return "\n".join(rows) + "\n"
