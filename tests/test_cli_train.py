"""`sweep train`: per-epoch lines, the JSON summary, and one clear line for each user mistake."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeps.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/digits.yaml")
SWEEP = str(Path(sys.executable).with_name("sweep"))


def test_train_prints_epochs_and_a_json_summary():
    done = subprocess.run(
        [SWEEP, "train", DIGITS, "--set", "train.epochs=3", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert sum(ln.startswith("epoch ") for ln in lines) == 3
    summary = json.loads(lines[-1])
    assert set(summary) == {
        "val_acc",
        "val_loss",
        "train_acc",
        "train_loss",
        "epochs_run",
        "diverged",
    }
    assert summary["epochs_run"] == 3 and summary["diverged"] is False
    assert summary["val_acc"] > 0.8


def test_a_user_mistake_is_one_line_without_traceback():
    done = subprocess.run(
        [SWEEP, "train", DIGITS, "--set", "train.lr=0"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr == "error: train.lr must be a number > 0; got 0.0\n"


@pytest.fixture
def files(tmp_path):
    X = np.random.default_rng(0).normal(size=(60, 4)).astype("float32")
    y = np.arange(60) % 3
    np.savez(tmp_path / "ok.npz", X=X, y=y)
    np.savez(tmp_path / "float_labels.npz", X=X, y=y + 0.5)
    bad_x = X.copy()
    bad_x[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=bad_x, y=y)
    np.savez(tmp_path / "tiny_class.npz", X=X, y=np.where(np.arange(60) == 0, 3, y))
    (tmp_path / "garbage.npz").write_text("not a zip")
    (tmp_path / "huge_label.csv").write_text("a,label\n" + "1,0\n2,1\n" * 5 + "3,1e300\n")
    return tmp_path


CASES = [
    (["train.lrr=0.1"], "unknown key train.lrr; did you mean train.lr?"),
    (["trian.lr=0.1"], "unknown key trian; did you mean train?"),
    (["train.epochs=ten"], r"train.epochs must be an integer in \[1, 1000000\]; got 'ten'"),
    (["train.epochs=0"], r"train.epochs must be an integer in \[1, 1000000\]; got 0"),
    (["train.lr=-0.1"], "train.lr must be a number > 0"),
    (["train.batch_size=0"], "train.batch_size must be an integer >= 1"),
    (["train.batch_size=5000"], "train.batch_size must be <= the training split"),
    (["train.lambda=-1"], "train.lambda must be a number >= 0"),
    (["train.momentum=1.0"], r"train.momentum must be a number in \[0, 1\)"),
    (["model.loss=l2"], "model.loss must be one of softmax, hinge, squared_hinge"),
    (["train.optimizer=rmsprop"], "train.optimizer must be one of sgd, momentum, nesterov, adam"),
    (["train.schedule=linear"], "train.schedule must be one of constant, step, cosine"),
    (["data.source=mnist"], "data.source must be one of digits"),
    (["data.source=npz", "data.path={tmp}/missing.npz"], "missing.npz"),
    (["data.source=npz", "data.path={tmp}/garbage.npz"], "garbage.npz"),
    (["data.source=npz", "data.path={tmp}/float_labels.npz"], "labels"),
    (["data.source=npz", "data.path={tmp}/nan.npz"], "NaN"),
    (["data.source=npz", "data.path={tmp}/tiny_class.npz"], "class 3"),
    (["data.source=npz"], "data.path is required for data.source npz"),
    (["train.seed=99999999999999999999"], r"train.seed must be an integer in \[0, 4294967295\]"),
    (["data.seed=4294967296"], r"data.seed must be an integer in \[0, 4294967295\]; got 4294"),
    (
        ["data.source=csv", "data.path={tmp}/huge_label.csv"],
        r"labels 0..C-1; 1 are not, e.g. 1e\+300",
    ),
    (["data.source=csv", "data.path=/dev/zero"], "/dev/zero is not a regular file"),
    (["data.source=csv", "data.path={tmp}"], "is a folder; give a data file"),
    (["train.optimizer=nesterov", "train.momentum=0"], "train.momentum must be > 0 for"),
    (["train.warmup_epochs=30"], r"train.warmup_epochs must be < train.epochs \(30\); got 30"),
]


@pytest.mark.parametrize(("sets", "message"), CASES)
def test_bad_input(files, capsys, sets, message, monkeypatch):
    monkeypatch.chdir(files)
    args = ["train", DIGITS]
    for s in sets:
        args += ["--set", s.format(tmp=files)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert sorted(p.name for p in files.iterdir()) == sorted(
        ["ok.npz", "float_labels.npz", "nan.npz", "tiny_class.npz", "garbage.npz", "huge_label.csv"]
    )  # nothing written


def test_missing_config_file(capsys):
    assert main(["train", "nope.yaml"]) == 2
    assert capsys.readouterr().err == "error: nope.yaml: no such config file\n"


def test_cuda_asked_where_there_is_none(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error cannot happen")  # CI has none
    assert main(["train", DIGITS, "--set", "train.device=cuda"]) == 2
    assert "train.device is cuda but no CUDA GPU is visible" in capsys.readouterr().err
