"""The documentation names every config key the code accepts."""

from pathlib import Path

from sweeps.spec import RESOURCE_RULES, SEARCH_RULES
from trainers.config import RULES

DOC = (Path(__file__).resolve().parents[1] / "docs/config.md").read_text()


def test_every_key_is_documented():
    keys = [
        *RULES,
        *(f"search.{k}" for k in SEARCH_RULES),
        *(f"resources.{k}" for k in RESOURCE_RULES),
    ]
    missing = [k for k in keys if f"`{k}`" not in DOC]
    assert missing == []
