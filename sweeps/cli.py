"""The ``sweep`` command. Every user mistake ends in one ``error:`` line and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sweeps import config as config_file
from trainers.config import ConfigError

EXIT_USER_ERROR = 2


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    flag = "  DIVERGED" if m["diverged"] else ""
    return (
        f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  "
        f"train_acc {m['train_acc']:.4f}  val_loss {m['val_loss']:.4f}  "
        f"val_acc {m['val_acc']:.4f}  lr {m['lr']:.3g}  ({m['epoch_seconds']:.2f} s){flag}"
    )


def cmd_train(args: argparse.Namespace) -> int:
    """One trial, no Ray: a line per epoch, then the final metrics."""
    from trainers.loop import Trial

    cfg = config_file.trainer_config(config_file.load(args.config, args.set))
    trial = Trial(cfg)
    print(f"training {cfg.model.loss} on {cfg.data.source} ({trial.device})", flush=True)
    final = trial.run(lambda m, _: print(_epoch_line(m, cfg.train.epochs), flush=True))
    keys = ("val_acc", "val_loss", "train_acc", "train_loss", "epochs_run", "diverged")
    summary = {k: final[k] for k in keys}
    print(
        "final: "
        + "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()
        )
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one configuration, without Ray")
    train.add_argument("config", help="YAML config, e.g. configs/digits.yaml")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=0.1 (repeatable)",
    )
    train.add_argument("--json", action="store_true", help="end with a JSON line of final metrics")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
