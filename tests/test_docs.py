"""docs/config.md lists every rule exactly as the rule tables state it."""

from sweeps.spec import docs
from sweeps.spec.sweep import SWEEP_RULES
from trainers.config import RULES, TOGETHER


def test_config_md_holds_the_generated_tables():
    text = docs.DOC.read_text()
    assert docs.render(text) == text, "docs/config.md is stale: run python -m sweeps.spec.docs"
    assert docs.main(["--check"]) == 0


def test_every_key_and_rule_is_documented():
    text = docs.DOC.read_text()
    missing = [k for k in [*RULES, *SWEEP_RULES] if f"| `{k}` |" not in text]
    assert missing == []
    assert [r.doc for r in TOGETHER if f"- {r.doc}" not in text] == []
    assert set(docs.BLOCK.findall(text)) and {m[1] for m in docs.BLOCK.findall(text)} == set(
        docs.rules_markdown()
    )


def test_a_stale_table_is_noticed():
    text = docs.DOC.read_text()
    stale = text.replace("| `train.lr` |", "| `train.learning_rate` |")
    assert docs.render(stale) == text
