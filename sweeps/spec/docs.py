"""docs/config.md's key tables, generated from the rule tables themselves.

``python -m sweeps.spec.docs`` rewrites each table between its markers in docs/config.md (the
prose around them is kept); ``python -m sweeps.spec.docs --check`` exits 1 when the file is stale,
as tests/test_docs.py does. A new rule is documented by adding its row to its table.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from sweeps.spec.space import DISTRIBUTIONS
from sweeps.spec.sweep import DEPENDS_ON, SWEEP_RULES, sweep_defaults
from trainers.config import RULES, TOGETHER, TrialConfig
from trainers.rules import markdown_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
BLOCK = re.compile(r"(<!-- rules: (\w+)[^>]*-->\n)(.*?)(<!-- end rules -->)", re.S)


def distributions_markdown() -> str:
    """The rows of docs/config.md's table of distributions: form, keys, draws."""
    keys = {None: "any", int: "integer", float: "number"}
    rows = ["| form | keys | draws |", "| --- | --- | --- |"]
    for d in DISTRIBUTIONS.values():
        rows.append(f"| `{{{d.name}: {d.form}}}` | {keys[d.kind]} | {d.doc} |")
    return "\n".join(rows) + "\n"


def rules_markdown() -> dict[str, str]:
    """Each generated block of docs/config.md by its name: the key tables (data, model,
    train, sweep), the distributions of a space (space) and the rules over several keys
    (together)."""
    trainer = TrialConfig().flat()
    tables = {
        name: markdown_table({k: r for k, r in RULES.items() if k.startswith(f"{name}.")}, trainer)
        for name in ("data", "model", "train")
    }
    together = [f"- {rule.doc};" for rule in TOGETHER]
    together += [
        f"- a searched `{key}` needs `{parent}` {' or '.join(values)} (set, or among the "
        "searched values);"
        for key, (parent, values) in DEPENDS_ON.items()
    ]
    together[-1] = together[-1][:-1] + "."
    return tables | {
        "sweep": markdown_table(SWEEP_RULES, sweep_defaults()),
        "space": distributions_markdown(),
        "together": "\n".join(together) + "\n",
    }


def render(text: str) -> str:
    """``text`` (docs/config.md) with every marked table regenerated."""
    tables = rules_markdown()
    return BLOCK.sub(lambda m: m[1] + tables[m[2]] + m[4], text)


def main(argv: list[str] | None = None) -> int:
    text = DOC.read_text()
    fresh = render(text)
    if "--check" in (argv if argv is not None else sys.argv[1:]):
        if fresh != text:
            print(f"{DOC} is out of date: run python -m sweeps.spec.docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
