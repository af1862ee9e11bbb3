"""The ``sweep`` command. Every user mistake ends in one ``error:`` line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.engine import stopping
from sweeps.spec import document
from sweeps.spec.document import add_set_argument
from trainers.rules import ConfigError, Rule, expanded

if TYPE_CHECKING:
    from sweeps.spec.sweep import SweepSpec

EXIT_USER_ERROR = 2
PORT = Rule(int, low=1, high=65535)
# What `sweep --help` says: plain text (argparse prints it as written, markup and all).
DESCRIPTION = "Hyperparameter sweeps of linear classifiers: Ray Tune trials, logged to MLflow."
EXIT_CODES = (
    "exit codes: 0 done; 1 failed (no trial finished, or the disk filled up: free space, "
    "then sweep resume NAME); 2 a mistake in the command or its config, nothing written; "
    "130 interrupted (Ctrl-C, SIGTERM), continue with sweep resume NAME"
)


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

    cfg = document.trainer_config(document.load(args.config, args.set))
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


def cmd_run(args: argparse.Namespace) -> int:
    """A sweep: validate everything first, then run it (or only describe it, --dry-run)."""
    from sweeps.spec.sweep import check_data, sweep_spec

    doc = document.load(args.config, args.set)
    spec = sweep_spec(doc, name=args.name)
    if args.dry_run:
        check_before_ray(spec, args.resume)
        check_data(spec)
        print(describe(spec))
        return 0
    from sweeps.engine.driver import run

    return run(spec, doc, resume=args.resume, exiting=args.exiting)


def check_before_ray(spec: SweepSpec, resume: bool) -> None:
    """What ``sweep run`` checks before Ray with no Ray, writing nothing, for --dry-run: the
    sweep's folder is new, or resumed with the config it began with; the tracking store
    answers (a SQLite file that is missing is not made); the storage can be written
    (sweeps.engine.driver.run; the checks that need Ray's resources are not made)."""
    from sweeps.spec.sweep import check_same_sweep, check_storage, folder_exists, folder_taken
    from sweeps.tracking.store import answering_store
    from sweeps.tracking.writer import recorded_store

    exists = folder_exists(spec)
    if exists and not resume:
        raise folder_taken(spec)
    if exists:
        check_same_sweep(spec)
    answering_store(spec.tracking_uri, Path.cwd(), recorded=recorded_store(spec.files.state))
    if not exists:
        check_storage(spec)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted sweep from its saved config and checkpoints. NAME may be the
    sweep's folder (runs/NAME/), as `sweep report` takes it: its parent is then the storage."""
    from sweeps.engine.driver import run
    from sweeps.record.layout import SweepFolder
    from sweeps.spec.document import load_saved
    from sweeps.spec.sweep import saved_spec

    name, storage = args.name, args.storage
    if "/" in name:
        folder = expanded(name, "NAME").resolve()
        name, storage = folder.name, str(folder.parent)
    doc = load_saved(name, storage)
    spec = saved_spec(doc, SweepFolder.of(storage, name).config)
    return run(spec, doc, resume=True, exiting=args.exiting)


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI for this store on 127.0.0.1 and print where the latest sweep's view
    is (sweeps.tracking.ui); the port is checked first, so that a mistake starts nothing and
    creates no store."""
    import shutil

    from sweeps.tracking.uri import resolve_tracking_uri, sqlite_file

    check_port_free(PORT.check("--port", args.port))
    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd(), "--tracking-uri")
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        raise ConfigError("mlflow not found beside this Python nor on PATH: install sweeps again")
    base = f"http://127.0.0.1:{args.port}"
    db = sqlite_file(uri)
    if db is not None:
        check_mlflow_sqlite(db)
    said = [f"MLflow UI for {uri} at {base} (Ctrl-C stops it)"]
    if db is not None:
        said += _latest_sweep(uri, base)
    print("\n".join(said), flush=True)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [
        mlflow,
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    os.execv(mlflow, cmd)


def check_mlflow_sqlite(db: Path) -> None:
    """A ConfigError unless ``db`` is a SQLite file that can be an MLflow store, read without
    writing: MLflow would make a missing file, or add its tables to another program's."""
    from sweeps.tracking.store import not_mlflow

    fix = "run `sweep ui` in the folder the sweep ran from, or give its store with --tracking-uri"
    if not db.is_file():
        raise ConfigError(f"no MLflow store at {db}: {fix}")
    if why := not_mlflow(db):
        raise ConfigError(f"{db} is no MLflow store ({why}): {fix}")


def _latest_sweep(uri: str, base: str) -> list[str]:
    """The lines that say where the latest sweep of a SQLite store is in the UI."""
    from sweeps.tracking.reader import latest_trials_page

    page = latest_trials_page(uri, base=base)
    if page is None:
        return ["no sweep in this store yet"]
    charts = latest_trials_page(uri, base=base, charts=True)
    return [f"the latest sweep's trials, best first: {page}"] + (
        [f"and its charts: {charts}"] if charts != page else []
    )


def check_port_free(port: int) -> None:
    """A ConfigError unless a server could listen on 127.0.0.1:port now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            raise ConfigError(
                f"--port {port}: cannot listen on 127.0.0.1:{port} ({err.strerror}); "
                "pick another port"
            ) from None


# ---------------------------------------------------------------- `sweep report`, `sweep status`
# (the HTML report and where sweeps stand; the work is in sweeps.view.report and sweeps.view.status)
def cmd_report(args: argparse.Namespace) -> int:
    """Write a sweep's HTML report and file it on its MLflow parent run; --out and
    --tracking-uri are checked before anything is read or drawn."""
    from sweeps.record.layout import unwritable
    from sweeps.view.report import report

    out = expanded(args.out, "--out") if args.out else None
    if out is not None and (why := unwritable(out)):
        raise ConfigError(f"--out {args.out}: {why}; give a folder you can write")
    logs = not args.no_log
    page = report(args.sweep, out, args.storage, given_store(args, writes=logs), log=logs)
    print(f"report: {page}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Every sweep's state, progress and best metric; or one sweep's detail."""
    from sweeps.view.status import show

    print(show(args.name, args.storage, given_store(args)))
    return 0


def given_store(args: argparse.Namespace, writes: bool = False) -> str | None:
    """--tracking-uri, checked and made absolute as `sweep ui` does, and asked within seconds
    as `sweep sync` asks it (a server that does not answer is refused in one line); a SQLite
    file only where the command ``writes`` to it (one that is only read may be read-only).
    None when not given: each sweep's own store (the one its state file names)."""
    from sweeps.tracking.uri import resolve_tracking_uri, sqlite_file

    if not args.tracking_uri:
        return None
    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd(), "--tracking-uri")
    if writes or sqlite_file(uri) is None:
        from sweeps.tracking.store import check_store

        check_store(uri, "--tracking-uri")
    return uri


def add_report_parsers(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="write a sweep's HTML report (figures embedded)")
    report.add_argument("sweep", help="the sweep's name (under --storage) or its folder")
    report.add_argument("--out", help="folder for the page and figures (default: SWEEP/report)")
    report.add_argument("--storage", default="runs", help="folder holding sweeps (default runs)")
    report.add_argument("--tracking-uri", help="default: the sweep's, as sweep run resolves it")
    report.add_argument("--no-log", action="store_true", help="do not file it on the MLflow run")
    report.set_defaults(func=cmd_report)

    status = sub.add_parser("status", help="where each sweep stands (or one sweep, by name)")
    status.add_argument("name", nargs="?", help="one sweep's detail (default: every sweep)")
    status.add_argument("--storage", default="runs", help="folder holding sweeps (default runs)")
    status.add_argument("--tracking-uri", help="default: each sweep's, as sweep run resolves it")
    status.set_defaults(func=cmd_status)


# ---------------------------------------------------------------- sweep sync (folder records)
def cmd_sync(args: argparse.Namespace) -> int:
    """Copy a sweep from its folder into an MLflow store, and its report where the folder has
    one and the store lacks it; run twice, one copy."""
    from sweeps.record.layout import SweepFolder
    from sweeps.tracking.sync import sync_folder

    done = sync_folder(args.name, args.storage, args.tracking_uri)
    folder = SweepFolder.of(args.storage, args.name)
    if folder.report.is_dir():  # (matplotlib: only where a report is drawn)
        from sweeps.view.report import file_report

        file_report(folder, done.uri, done.parent)
    print(
        f"sweep {args.name} -> {done.uri} (experiment {done.experiment}): parent run "
        f"{done.parent} and {done.trials} trial runs, {done.refits} refit runs; "
        f"created {done.created} runs, logged {done.logged} epochs"
    )
    return 0


def add_sync_parser(sub: Any) -> None:
    sync = sub.add_parser(
        "sync", help="copy a sweep from its folder into an MLflow store (only what it lacks)"
    )
    sync.add_argument("name")
    sync.add_argument("--storage", default="runs", help="folder holding the sweep (default runs)")
    sync.add_argument(
        "--tracking-uri",
        help="the store to copy into (default: the sweep's own: its config's, else "
        "$MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    sync.set_defaults(func=cmd_sync)


def describe(spec: Any) -> str:
    """What --dry-run prints: the resolved search and space, and the number of trials."""
    from sweeps.spec.sweep import STOPS_EARLY

    s = spec.search
    lines = [
        f"sweep {spec.name}: {s.type} search, {spec.num_trials()} trials, "
        f"metric {s.metric} ({s.mode}), results in {spec.folder}"
    ]
    if s.type in STOPS_EARLY:
        lines.append(
            f"{s.type}: max_t {spec.trial.train.epochs} epochs, grace_period "
            f"{s.grace_period}, reduction_factor {s.reduction_factor}, "
            f"brackets {s.brackets}"
        )
    if s.type == "pbt":
        lines.append(
            f"pbt: perturbation_interval {s.perturbation_interval}, quantile_fraction "
            f"{s.quantile_fraction:g}, resample_probability {s.resample_probability:g}"
        )
    lines.append(f"resources per trial: {spec.resources.cpu:g} cpu, {spec.resources.gpu:g} gpu")
    lines += [f"  {key}: {json.dumps(d.doc())}" for key, d in spec.space.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description=DESCRIPTION, epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one configuration, without Ray")
    train.add_argument("config", help="YAML config, e.g. configs/digits.yaml")
    add_set_argument(train, "train.lr=0.1")
    train.add_argument("--json", action="store_true", help="end with a JSON line of final metrics")
    train.set_defaults(func=cmd_train)

    run = sub.add_parser("run", help="run a sweep with Ray Tune, logging to MLflow")
    run.add_argument("config", help="YAML sweep config, e.g. configs/digits_asha.yaml")
    add_set_argument(run, "search.num_samples=8")
    run.add_argument("--name", help="the sweep's name (default: name in the config)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in its folder with this same config, or start it where there "
        "is none (what a requeued SLURM job runs)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, its data, the MLflow store and the storage as a run does "
        "before Ray; print the resolved space and the number of trials; run and write nothing",
    )
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="continue an interrupted sweep by name")
    resume.add_argument("name", help="the sweep's name (under --storage) or its folder")
    resume.add_argument("--storage", default="runs", help="folder holding the sweep (default runs)")
    resume.set_defaults(func=cmd_resume)

    ui = sub.add_parser("ui", help="serve the MLflow UI for this store on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")
    ui.set_defaults(func=cmd_ui)

    add_report_parsers(sub)  # `sweep report`, `sweep status`
    add_sync_parser(sub)
    from sweeps.slurm.submit import add_parser as add_submit_parser  # `sweep submit`: SLURM jobs

    add_submit_parser(sub)
    return parser


def main(argv: list[str] | None = None, exiting: bool = False) -> int:
    """The CLI; ``exiting``: the process ends when this returns (see sweeps.engine.driver.run)."""
    args = build_parser().parse_args(argv)
    args.exiting = exiting
    try:
        code = args.func(args)
        sys.stdout.flush()  # (a closed pipe says so here, not at the interpreter's exit)
        return code
    except BrokenPipeError:  # `sweep ... | head -1`: the reader has gone; nothing to say
        # the Python docs' recipe: what is still buffered goes nowhere, not to a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # Ctrl-C or a stop signal where the command says no more
        print("interrupted", flush=True)
        return stopping.EXIT_INTERRUPTED


def console() -> None:
    """The ``sweep`` executable: ``main``, then the process ends without the interpreter's
    teardown. Every file and MLflow write is done by then (run() waits for them, then kills
    Ray's local processes), and unloading torch, Ray's core worker and MLflow would add about
    2 s to each sweep. A stop signal from the start on ends it as Ctrl-C does
    (sweeps/engine/stopping.py), with exit code 130."""
    stopping.install()
    code = main(exiting=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
