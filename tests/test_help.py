"""`sweep --help` and every subcommand's help read as plain text: no reStructuredText or
Markdown markup leaks from docstrings into what a user reads."""

from __future__ import annotations

import argparse

from sweeps.cli import build_parser


def every_parser() -> dict[str, argparse.ArgumentParser]:
    top = build_parser()
    parsers = {"sweep": top}
    for action in top._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            parsers |= {f"sweep {name}": p for name, p in action.choices.items()}
    return parsers


def test_help_has_every_subcommand():
    assert {"sweep run", "sweep resume", "sweep status", "sweep submit"} <= set(every_parser())


def test_no_help_text_holds_a_backtick():
    marked = {
        name: [line for line in parser.format_help().splitlines() if "`" in line]
        for name, parser in every_parser().items()
    }
    assert {name: lines for name, lines in marked.items() if lines} == {}


def test_top_help_names_the_exit_codes():
    text = " ".join(build_parser().format_help().split())
    for code in ("0 done", "1 failed", "2 a mistake", "130 interrupted"):
        assert code in text
