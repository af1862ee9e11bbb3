"""What `sweep run` refuses before it writes anything, and what `--dry-run` checks as the run
does: train.device cuda for trials that get no GPU, a search whose draws could not differ, an
empty config file, storage that cannot be written, a tracking store that does not answer.
Each: one `error:` line naming the key or file and the fix, exit code 2, nothing written (no
runs/<name>/, no mlflow.db, so no MLflow experiment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.search.draws import sample_params
from sweeps.spec.sweep import sweep_spec
from trainers.config import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import one_error_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(Path(sys.executable).with_name("sweep"))
ASHA = str(ROOT / "configs/digits_asha.yaml")
SHORT = ["--set", "search.num_samples=2", "--set", "train.epochs=3"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory with no MLflow URI from outside."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return cwd


def refused(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """``sweep ARGS`` as a process: exit 2, one error line, no traceback, nothing on stdout
    (not "trials run on the CPU" either), nothing in ``cwd``; the line."""
    done = subprocess.run(
        [SWEEP, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert list(cwd.iterdir()) == []  # no runs/<name>/, no mlflow.db (so no experiment)
    return lines[0]


# ---------------------------------------------------------------- train.device cuda, no GPU
FIXED_CUDA = (
    "error: train.device is cuda but resources.gpu is 0, so no trial gets a GPU; set "
    "resources.gpu (1: a GPU per trial, 0.25: four trials to a GPU), or set train.device to "
    "auto (a GPU where there is one) or cpu"
)
SEARCHED_CUDA = (
    "error: space.train.device includes cuda but resources.gpu is 0, so no trial gets a GPU; "
    "set resources.gpu (1: a GPU per trial, 0.25: four trials to a GPU), or take cuda out of "
    "space.train.device"
)


@pytest.mark.parametrize("dry", [["--dry-run"], []], ids=["dry-run", "run"])
@pytest.mark.parametrize("engine", ["trial", "fused"])
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.device=cuda"], FIXED_CUDA),
        (["space.train.device={choice: [cpu, cuda]}"], SEARCHED_CUDA),
        (["search.type=grid", "space={train.device: {grid: [cuda]}}"], SEARCHED_CUDA),
    ],
)
def test_cuda_with_resources_gpu_0_is_refused_by_the_spec_check(
    work, capsys, dry, engine, sets, message
):
    argv = ["run", ASHA, *SHORT, "--set", f"search.engine={engine}", "--name", "mk8b", *dry]
    argv += [arg for s in sets for arg in ("--set", s)]
    assert one_error_line(capsys, argv, work) == message


def test_cuda_with_a_gpu_to_ask_for_or_none_asked_passes_the_spec_check(work, capsys):
    for sets in (["train.device=cuda", "resources.gpu=0.25"], ["train.device=auto"]):
        assert main(["run", ASHA, *SHORT, "--dry-run", *(f"--set={s}" for s in sets)]) == 0
    assert "resources per trial: 1 cpu, 0.25 gpu" in capsys.readouterr().out
    assert list(work.iterdir()) == []


def no_gpu_environment() -> dict[str, str]:
    """This machine's environment with no GPU for a local Ray (and torch) to find, here or on
    a GPU machine alike, and no Ray cluster to join."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return env | {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize(
    ("sets", "said", "fix"),
    [
        (["search.engine=trial", "train.device=cuda"], "train.device is cuda",
         "set train.device to auto (a GPU where there is one) or cpu"),
        (["search.engine=fused", "space.train.device={choice: [cpu, cuda]}"],
         "space.train.device includes cuda", "take cuda out of space.train.device"),
    ],
)  # fmt: skip
def test_cuda_trials_on_a_ray_without_a_gpu_are_refused_before_the_folder(work, sets, said, fix):
    """resources.gpu 1 passes the spec check; the local Ray then has no GPU to give, and the
    trials would each fail in Ray: refused once Ray is up, before runs/<name>/ or MLflow."""
    args = ["run", ASHA, *SHORT, "--set", "resources.gpu=1", "--name", "mk8b"]
    line = refused([*args, *(f"--set={s}" for s in sets)], work, no_gpu_environment())
    assert line == f"error: {said} but this machine's Ray has no GPU, so no trial gets one; {fix}"


# ---------------------------------------------------------------- a space that varies nothing
def spec_of(search: dict, space: dict | None = None):
    doc = {"name": "t", "data": {"source": "digits"}, "search": search}
    return sweep_spec(doc | ({"space": space} if space is not None else {}))


@pytest.mark.parametrize("kind", ["random", "asha", "tpe", "bohb"])
@pytest.mark.parametrize("space", [None, {}])
def test_draws_of_an_empty_space_are_refused(kind, space):
    with pytest.raises(ConfigError) as err:
        spec_of({"type": kind, "num_samples": 3}, space)
    assert str(err.value) == (
        f"space is empty: the 3 configurations of this {kind} search would all be the same; "
        "add keys under space (e.g. train.lr: {loguniform: [1e-3, 0.3]}), or set "
        "search.num_samples: 1"
    )
    assert spec_of({"type": kind, "num_samples": 1}, space).num_trials() == 1  # one is fine


@pytest.mark.parametrize(
    ("search", "space", "said"),
    [
        ({"type": "random", "num_samples": 2}, {"train.lr": {"grid": [0.01, 0.1]}},
         "space draws nothing at random (grid values, one-value lists): the 2 passes of this "
         "random search over it would repeat the same configurations; add keys"),
        ({"type": "tpe", "num_samples": 4}, {"train.lr": {"choice": [0.01]}},
         "space draws nothing at random"),
        ({"type": "grid", "num_samples": 3}, {"train.seed": {"grid": [1, 2]}},
         "space.train.seed is on the grid: its 3 repeats would be the same configurations; "
         "take train.seed out of space"),
    ],
)  # fmt: skip
def test_a_space_whose_repeats_are_the_same_is_refused(search, space, said):
    with pytest.raises(ConfigError) as err:
        spec_of(search, space)
    assert str(err.value).startswith(said)
    assert spec_of(search | {"num_samples": 1}, space).num_trials() >= 1  # one pass is fine


def test_an_empty_grid_repeated_is_the_config_with_new_seeds():
    """A grid's repeats each draw a train.seed: without a space they still differ."""
    spec = spec_of({"type": "grid", "num_samples": 3})
    seeds = [params["train.seed"] for params in sample_params(spec)]
    assert len(seeds) == 3 and len(set(seeds)) == 3


def test_pbt_without_a_space_says_what_it_perturbs():
    with pytest.raises(ConfigError, match="search.type pbt perturbs train.lr, train.lambda"):
        spec_of({"type": "pbt", "num_samples": 4})


def test_a_sweep_config_without_a_space_is_refused_by_sweep_run(work, capsys):
    line = one_error_line(capsys, ["run", ASHA, "--set", "space=null", "--dry-run"], work)
    assert line.startswith("error: space is empty: the 64 configurations of this asha search")


# ---------------------------------------------------------------- an empty config file
@pytest.mark.parametrize("command", ["run", "train"])
@pytest.mark.parametrize("text", ["", "# a comment, nothing else\n"], ids=["empty", "comments"])
def test_an_empty_config_file_is_named(tmp_path, work, capsys, command, text):
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    assert one_error_line(capsys, [command, str(config)], work) == (
        f"error: {config} is empty; give a config of sections (data, model, train; a sweep's "
        "search and space too), e.g. configs/digits_asha.yaml"
    )


# ---------------------------------------------------------------- --dry-run checks as run does
@pytest.mark.parametrize(
    ("sets", "env", "expected"),
    [
        (["storage=afile"], {}, "error: storage: {work}/afile is a file, not a folder; set "
         "storage to a folder you can write"),
        (["storage=afile/below"], {}, "error: storage: {work}/afile is a file, not a folder"),
        (["mlflow.tracking_uri=http://127.0.0.1:1"], {}, "error: mlflow.tracking_uri: no "
         "MLflow server answers at http://127.0.0.1:1 (connection refused); start it or fix "
         "the URI"),
        ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, "error: $MLFLOW_TRACKING_URI: no "
         "MLflow server answers at http://127.0.0.1:1"),
        (["mlflow.tracking_uri=sqlite:///{work}/no/such/mlflow.db"], {}, "error: "
         "mlflow.tracking_uri: cannot use the SQLite store {work}/no/such/mlflow.db: no folder "
         "{work}/no/such"),
    ],
)  # fmt: skip
def test_dry_run_refuses_what_the_run_refuses_before_ray(work, sets, env, expected):
    """The same line from `sweep run --dry-run` as from `sweep run`, which refuses these before
    Ray starts; both leave the folder as it was (the file afile alone)."""
    (work / "afile").write_text("x")
    args = ["run", ASHA, *SHORT, *(f"--set={s.format(work=work)}" for s in sets)]
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env
    lines = []
    for dry in (["--dry-run"], []):
        done = subprocess.run(
            [SWEEP, *args, *dry], capture_output=True, text=True, cwd=work, env=environment,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
        lines.append(done.stderr)
        assert [p.name for p in work.iterdir()] == ["afile"]  # no runs/, no mlflow.db
    assert lines[0] == lines[1]
    assert lines[0].splitlines() == [lines[0].strip()]
    assert lines[0].startswith(expected.format(work=work)), lines[0]


def test_a_dry_run_makes_no_sqlite_store(work, capsys):
    """The default store, ./mlflow.db, is checked (its folder can be written) but not made."""
    assert main(["run", ASHA, "--dry-run"]) == 0
    assert "64 trials" in capsys.readouterr().out
    assert list(work.iterdir()) == []
