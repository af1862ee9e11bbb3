"""``sweep submit``: a sweep as SLURM jobs, with a Ray cluster over the jobs' nodes.

profile (bundled, or the user's YAML file) + sweep config + options -> ``plan`` (every value
checked, nothing written; a mistake is one ConfigError line) -> ``render`` (the sbatch text, a
pure function of the Job) -> printed (--dry-run), or written to the sweep folder and sbatch'ed.

single-job: one job over N nodes: the Ray head and the driver on the first node, one Ray worker
per other node through srun. workers: a CPU-only head job (Ray head without CPUs for trials, the
driver, the MLflow writes) that submits an array of worker jobs, one GPU each, which join its
Ray cluster as they start and leave when they end. The shell side (ports from the job id,
starting and stopping Ray, signals, requeue) is slurm/ray.sh.

slurm/ and configs/clusters/ are installed inside the package (sweeps/slurm/scripts and
sweeps/slurm/profiles are links to them in the checkout), so an installed ``sweep`` finds its ray.sh
and its profiles wherever pip put it, and the job sources that ray.sh.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from sweeps.record.layout import SweepFolder
from sweeps.spec import document
from sweeps.spec.sweep import (
    TRACKING_URI_PATTERN,
    TRACKING_URI_WHAT,
    SweepSpec,
    check_same_sweep,
    sweep_spec,
)
from sweeps.tracking.uri import resolve_tracking_uri
from trainers.rules import ConfigError, Rule, shown, unknown_key_error

# On disk, the links followed (in a checkout: configs/clusters/ and slurm/): the job sources
# ray.sh by its path when it runs.
PACKAGE = Path(str(resources.files("sweeps.slurm")))
PROFILES, SLURM_DIR = (PACKAGE / "profiles").resolve(), (PACKAGE / "scripts").resolve()
MODES = ("single-job", "workers")
WORKERS_MIN_FAILURES = 3  # workers mode: a worker leaving fails its trials; retry them elsewhere


@dataclass
class Profile:
    """A cluster profile, configs/clusters/*.yaml: these defaults are its schema."""

    mode: str = "single-job"  # single-job | workers
    partition: str = "debug"  # a single job's partition, or the worker jobs'
    head_partition: str = ""  # workers mode: the head job's (CPU) partition; "": partition
    nodes: int = 1  # single-job: nodes in the job
    workers: int = 2  # workers mode: worker jobs in the array
    cpus_per_node: int = 2  # per node of a single job, or per worker job
    gpus_per_node: int = 0  # likewise
    gres: str = "gpu"  # the GRES for GPUs, typed if wanted: gpu:v100-sxm2
    max_gpus_per_job: dict = field(default_factory=dict)  # partition -> most GPUs in one job
    time: str = "01:00:00"  # each job's limit, [D-]HH:MM:SS
    mem: str = ""  # per node, e.g. 32G; "": the partition's default
    head_cpus: int = 2  # workers mode: the head job
    head_mem: str = ""
    modules: list = field(default_factory=list)  # `module load`, in this order
    conda_env: str = ""  # `conda activate` it, after the modules
    venv: str = ""  # or `source VENV/bin/activate`
    python: str = ""  # "": python after an activation, else the one running `sweep submit`
    trials_per_gpu: int = 4  # GPU share of a trial when the config asks for no GPU
    signal_seconds: int = 180  # USR1 this long before the limit: checkpoint, requeue
    max_restarts: int = 3  # requeues after that signal, per job
    mlflow_tracking_uri: str = ""  # "": as docs/slurm.md says (config, env, recorded, cwd)
    ray_tmp: str = "/tmp"  # node-local; Ray's temp dirs are <ray_tmp>/r<job id>n<node>


_NAME, _WORD = r"[A-Za-z0-9_.-]{1,64}", r"[A-Za-z0-9_.+/@=-]{1,200}"
_PATH = r"/[A-Za-z0-9_./+,=@~-]*"  # absolute, and plain enough for #SBATCH lines
_SIZE = r"(\d+[KMGT]?)?"


def _at_least(n: int) -> Rule:
    return Rule(int, low=n)


def _text(what: str, pattern: str) -> Rule:
    return Rule(str, pattern=pattern, what=what)


RULES: dict[str, Rule] = {  # a profile's keys, and the command line's overrides of them
    "mode": Rule(str, choices=MODES),
    "partition": _text("a partition name (letters, digits, _ . -)", _NAME),
    "head_partition": _text("a partition name or empty", f"({_NAME})?"),
    "nodes": _at_least(1),
    "workers": _at_least(1),
    "cpus_per_node": _at_least(1),
    "gpus_per_node": _at_least(0),
    "gres": _text("a GRES name like gpu or gpu:v100-sxm2", r"\w+(:[\w.-]+)?"),
    "max_gpus_per_job": Rule(
        dict,
        keys=Rule(str, pattern=_NAME),
        items=Rule(int, low=0),
        what="a mapping partition -> integer",
    ),  # fmt: skip
    "time": _text("[D-]HH:MM:SS, e.g. 04:00:00", r"(\d+-)?\d{1,2}:[0-5]\d:[0-5]\d"),
    "mem": _text("empty or a size like 32G", _SIZE),
    "head_cpus": _at_least(1),
    "head_mem": _text("empty or a size like 8G", _SIZE),
    "modules": Rule(list, items=Rule(str, pattern=_WORD), what="a list of module names"),
    "conda_env": _text("an environment name or path, or empty", f"({_WORD})?"),
    "venv": _text("empty or an absolute path", f"({_PATH})?"),
    "python": _text("empty, a command or an absolute path", f"({_WORD})?"),
    "trials_per_gpu": _at_least(1),
    "signal_seconds": _at_least(10),
    "max_restarts": _at_least(0),
    "mlflow_tracking_uri": _text(f"empty or {TRACKING_URI_WHAT}", f"({TRACKING_URI_PATTERN})?"),
    "ray_tmp": _text("an absolute path of at most 40 characters", rf"(?=.{{1,40}}\Z){_PATH}"),
}


def load_profile(name: str, cwd: Path | None = None) -> Profile:
    """A user's profile by its path (a file that exists, or a name ending in .yaml or .yml;
    relative to ``cwd``), else a bundled profile by name."""
    path = (cwd or Path.cwd()) / name
    bundled = {p.stem: p for p in PROFILES.glob("*.yaml")}
    known = ", ".join(sorted(bundled))
    if not (path.is_file() or name.endswith((".yaml", ".yml"))):
        if name not in bundled:
            raise ConfigError(
                f"unknown cluster profile {shown(name)}; known: {known} (or a .yaml path)"
            )
        path = bundled[name]
    elif not path.exists():
        raise ConfigError(f"{path}: no such cluster profile; the bundled ones: {known}")
    doc = document.read_yaml(path, "cluster profile") or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a profile must be a YAML mapping of settings")
    keys = [f.name for f in fields(Profile)]
    values = {}
    for key, value in doc.items():
        if key not in keys:
            raise ConfigError(f"profile {path.stem}: {unknown_key_error(str(key), keys)}")
        value = "" if value is None else value
        values[key] = RULES[key].check(f"profile {path.stem}: {key}", value)
    return Profile(**values)


@dataclass
class Job:
    """Everything the script needs, resolved and checked (render's whole input)."""

    mode: str
    name: str
    folder: Path  # the sweep's folder: logs, the script, Ray's and the driver's results
    workdir: Path  # where `sweep submit` ran: the jobs run there too
    command: list[str]  # the driver's arguments after `python -u -m sweeps.cli`
    profile: Profile  # with the command line's overrides applied
    python: str
    tracking_uri: str
    trial: dict[str, float]  # each trial's resources, for the header
    resume: str  # the command that resumes this sweep, for messages


def seconds(hms: str) -> int:
    days, _, rest = hms.rpartition("-")
    h, m, s = (int(x) for x in rest.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def plan(args: argparse.Namespace, cwd: Path | None = None) -> Job:
    """Check the sweep config, the profile and the options; raise ConfigError at the first
    mistake (every input mistake before the machine's state: the folder, sbatch). Writes
    nothing."""

    cwd = (cwd or Path.cwd()).resolve()
    config = (cwd / args.config).resolve()
    spec = sweep_spec(document.load(config, args.set), name=args.name)
    prof = _profile(args, cwd)
    _check_options(args, prof, spec, cwd)
    trial, sets = _trial_resources(args.set, prof, spec)
    _check_environment(args, spec)
    uri = resolve_tracking_uri(
        spec.tracking_uri, cwd, fallback=prof.mlflow_tracking_uri, recorded=_recorded(spec)
    )
    return Job(
        mode=prof.mode,
        name=spec.name,
        folder=spec.folder,
        workdir=cwd,
        command=["run", str(config), "--name", spec.name, "--resume", *_sets(sets)],
        profile=prof,
        python=prof.python or ("python" if prof.conda_env or prof.venv else sys.executable),
        tracking_uri=uri,
        trial=trial,
        resume=_resume_command(args, prof, spec, config, cwd),
    )


OPTIONS = ("mode", "partition", "nodes", "workers", "cpus_per_node", "gpus_per_node", "time")


def _profile(args: argparse.Namespace, cwd: Path) -> Profile:
    """The profile with the command line's options applied, each checked by its rule."""
    prof = load_profile(args.profile, cwd)
    for key in OPTIONS:
        if (value := getattr(args, key, None)) is not None:
            setattr(prof, key, RULES[key].check("--" + key.replace("_", "-"), value))
    return prof


def _check_options(args: argparse.Namespace, prof: Profile, spec: SweepSpec, cwd: Path) -> None:
    """The rules between options, profile and config."""
    workers, folder = prof.mode == "workers", spec.folder
    gpus_per_job = prof.gpus_per_node * (1 if workers else prof.nodes)
    cap = prof.max_gpus_per_job.get(prof.partition, gpus_per_job)
    refuse = [  # (mistake?, what to say), in the order they are checked
        (args.nodes is not None and workers, "--nodes is for --mode single-job, not workers"),
        (args.workers is not None and not workers, "--workers is for --mode workers"),
        (seconds(prof.time) <= prof.signal_seconds + 60, f"--time {prof.time} leaves no room "
         f"for the pre-timeout signal {prof.signal_seconds} s before the end"),
        (gpus_per_job > cap, _too_many_gpus(prof, cap, gpus_per_job)),
        (not all(re.fullmatch(_PATH, str(d)) for d in (folder, cwd)), f"the sweep folder "
         f"{shown(str(folder))} or working directory {shown(str(cwd))} has characters SLURM "
         "options cannot take"),
    ]  # fmt: skip
    for mistake, message in refuse:
        if mistake:
            raise ConfigError(message)


def _too_many_gpus(prof: Profile, cap: int, gpus_per_job: int) -> str:
    """A job would hold more GPUs than its partition allows, and what to change: in workers
    mode each worker job holds --gpus-per-node of them, so more workers, not more per job; in
    single-job mode the one job holds them all, so worker jobs, or fewer nodes."""
    roomier = sorted(p for p, n in prof.max_gpus_per_job.items() if n >= gpus_per_job)
    partition = f"--partition {' or '.join(roomier)}" if roomier else "another --partition"
    said = f"partition {prof.partition} allows {cap} GPU(s) per job, not {gpus_per_job}"
    if cap == 0:
        return f"{said}: use --gpus-per-node 0, or {partition}"
    if prof.mode == "workers":
        more = f"use --gpus-per-node {cap} and more --workers"
        return f"{said} (each worker is one job): {more}, or {partition}"
    if prof.gpus_per_node > cap:
        return f"{said}: use --mode workers --gpus-per-node {cap}, or {partition}"
    return f"{said}: use --mode workers, --nodes {cap // prof.gpus_per_node}, or {partition}"


def _trial_resources(
    given_sets: list[str], prof: Profile, spec: SweepSpec
) -> tuple[dict[str, float], list[str]]:
    """Each trial's resources, and the --set overrides the driver gets: on GPU nodes a config
    asking for no GPU shares them; workers mode retries trials a leaving worker failed."""
    given, sets = {item.partition("=")[0].strip() for item in given_sets}, list(given_sets)
    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    if prof.gpus_per_node and gpu == 0 and "resources.gpu" not in given:
        gpu = round(1 / prof.trials_per_gpu, 4)
        sets.append(f"resources.gpu={gpu:g}")
        if "resources.cpu" not in given:
            cpu = max(1, prof.cpus_per_node // (prof.gpus_per_node * prof.trials_per_gpu))
            sets.append(f"resources.cpu={cpu:g}")
    if cpu > prof.cpus_per_node or gpu > prof.gpus_per_node:
        raise ConfigError(f"a trial asks for {cpu:g} CPU, {gpu:g} GPU; a node has "
                          f"{prof.cpus_per_node} CPU, {prof.gpus_per_node} GPU: no trial could "
                          "run (change resources, --cpus-per-node or --gpus-per-node)")  # fmt: skip
    if prof.mode == "workers" and spec.search.max_failures < WORKERS_MIN_FAILURES:
        sets.append(f"search.max_failures={WORKERS_MIN_FAILURES}")
    return {"cpu": cpu, "gpu": gpu}, sets


def _check_environment(args: argparse.Namespace, spec: SweepSpec) -> None:
    """What the input cannot fix: a sweep already in the folder, no SLURM here."""
    if not args.resume and any(f.exists() for f in (spec.files.tuner_state, spec.files.config)):
        raise ConfigError(
            f"{spec.folder} holds sweep {spec.name} already; continue it with --resume, "
            "or pick another --name"
        )
    if args.resume:
        check_same_sweep(spec)
    if not args.dry_run and not shutil.which("sbatch"):
        raise ConfigError("sbatch not found: run `sweep submit` where SLURM is (a login node)")
    if not (SLURM_DIR / "ray.sh").is_file():
        raise ConfigError(
            f"{SLURM_DIR}/ray.sh is missing: the sweeps package is installed incompletely or "
            "zipped; install it again with pip"
        )


def _recorded(spec: SweepSpec) -> str | None:
    """The store a resumed sweep's runs are in (its state file's), so that its jobs write
    where `sweep run --resume` would: no MLflow import for a sweep that has none."""
    if not spec.files.state.exists():
        return None
    from sweeps.tracking.writer import recorded_store

    return recorded_store(spec.files.state)


def _sets(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def _resume_command(
    args: argparse.Namespace, prof: Profile, spec: SweepSpec, config: Path, cwd: Path
) -> str:
    """The command that resumes this sweep, every option spelt out, for messages."""
    workers = prof.mode == "workers"
    count = ["--workers", str(prof.workers)] if workers else ["--nodes", str(prof.nodes)]
    resume = ["sweep", "submit", str(config), "--profile", args.profile, "--mode", prof.mode]
    resume += [*count, "--gpus-per-node", str(prof.gpus_per_node), "--cpus-per-node"]
    resume += [str(prof.cpus_per_node), "--time", prof.time, "--partition", prof.partition]
    resume += ["--name", spec.name, *_sets(args.set), "--resume"]
    return f"cd {shlex.quote(str(cwd))} && {shlex.join(resume)}"


def _sbatch(options: dict[str, object]) -> list[str]:
    return [f"#SBATCH --{k}" + ("" if v is True else f"={v}") for k, v in sorted(options.items())]


def _setup(job: Job) -> list[str]:
    p, q = job.profile, shlex.quote
    token = SweepFolder(job.folder).ray_token
    lines = [f"module load {q(m)}" for m in p.modules]
    if p.conda_env:
        lines += ['eval "$(conda shell.bash hook)"', f"conda activate {q(p.conda_env)}"]
    if p.venv:
        lines.append(f"source {q(p.venv + '/bin/activate')}")
    return lines + [  # set -u only now: module and conda scripts may read unset variables
        "set -uo pipefail",
        f"export PYTHON={q(job.python)} SWEEPS_RAY_TMP={q(p.ray_tmp)}",
        f"export MLFLOW_TRACKING_URI={q(job.tracking_uri)}",
        # Ray's token authentication, with the token of the sweep's folder (slurm/ray.sh
        # ray_token); a token or a local-only Ray setting of the submitting shell is dropped
        "unset RAY_AUTH_TOKEN RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
        f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={q(str(token))}",
        "export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1",
        f"source {q(str(SLURM_DIR / 'ray.sh'))}",
        "sweeps_check_python",
    ]


def render(job: Job) -> str:
    """The sbatch script of a job (in workers mode the head job's, with the worker array's
    script inside it). Pure: the same Job gives the same text."""
    p, q, workers = job.profile, shlex.quote, job.mode == "workers"
    gres = {"gres": f"{p.gres}:{p.gpus_per_node}"} if p.gpus_per_node else {}
    common = {"chdir": job.workdir, "job-name": f"sweep-{job.name}", "time": p.time}
    node = {"cpus-per-task": p.cpus_per_node, **gres} | ({"mem": p.mem} if p.mem else {})
    head = common | {"output": f"{job.folder}/slurm-%j.out", "open-mode": "append"}
    head |= {"requeue": True, "signal": f"B:USR1@{p.signal_seconds}"}
    if workers:
        head |= {"partition": p.head_partition or p.partition, "nodes": 1, "ntasks": 1}
        head |= {"cpus-per-task": p.head_cpus} | ({"mem": p.head_mem} if p.head_mem else {})
        size = f"{p.workers} worker jobs x ({p.cpus_per_node} CPU, {p.gpus_per_node} GPU)"
    else:
        head |= {"partition": p.partition, "nodes": p.nodes, "ntasks-per-node": 1, **node}
        size = f"{p.nodes} node(s) x ({p.cpus_per_node} CPU, {p.gpus_per_node} GPU)"
    out = [
        "#!/bin/bash",
        f"# sweep {job.name}, --mode {job.mode}: {size}; "
        f"each trial {job.trial['cpu']:g} CPU, {job.trial['gpu']:g} GPU",
        "# rendered by `sweep submit` (sweeps/slurm/submit.py); the Ray side: ray.sh, sourced"
        " below",
        *_sbatch(head),
        "",
        "# setup",
        *_setup(job),
        "sweeps_trap_signals",
        'sweeps_log "job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, restart ${SLURM_RESTART_COUNT:-0}"',
        "",
    ]
    ray_sh = q(str(SLURM_DIR / "ray.sh"))
    if workers:
        address = str(SweepFolder(job.folder).head_address)
        worker = common | node | {"partition": p.partition, "nodes": 1, "ntasks": 1}
        worker |= {"array": f"1-{p.workers}", "no-requeue": True}
        worker |= {"output": f"{job.folder}/worker-%A_%a.out"}
        out += [
            "# Ray: the head here, with no CPU or GPU for trials; its address for the workers",
            "ray_head --num-cpus=0 --num-gpus=0",
            f"ray_publish_address {q(address)}",
            "# the worker jobs: each joins when it starts, leaves when it ends; cancelled at exit",
            f"sweeps_submit_workers {q(str(job.folder))} <<'WORKER_JOB'",
            "#!/bin/bash",
            f"# a Ray worker of sweep {job.name}, submitted by its head job",
            *_sbatch(worker),
            *_setup(job),
            f"exec bash {ray_sh} worker {q(address)} 0",
            "WORKER_JOB",
        ]
    else:
        other = ", one worker on each other node" if p.nodes > 1 else ""
        out += [f"# Ray: the head on this node{other}"]
        out += ['ray_head --num-cpus="$(slurm_cpus)" --num-gpus="$(slurm_gpus)"']
    if not workers and p.nodes > 1:
        step = {"nodes": p.nodes - 1, "ntasks": p.nodes - 1, "ntasks-per-node": 1}
        step |= {"cpus-per-task": p.cpus_per_node, **gres, "kill-on-bad-exit": 0}
        flags = " ".join(f"--{k}={v}" for k, v in step.items())
        out += [f"ray_other_nodes {flags}", f"ray_wait_nodes {p.nodes}"]
    out += [
        "",
        "# command",
        f'run_driver "$PYTHON" -u -m sweeps.cli {shlex.join(job.command)}',
        *(["ray_report"] if workers or p.nodes > 1 else []),
        f"sweeps_finish {p.max_restarts} {q(job.resume)}",
    ]
    return "\n".join(out) + "\n"


def submit(job: Job) -> str:
    """Write the script into the sweep folder and sbatch it; the job id."""
    created = next((d for d in (*reversed(job.folder.parents), job.folder) if not d.exists()), None)
    job.folder.mkdir(parents=True, exist_ok=True)
    script = SweepFolder(job.folder).job_script
    script.write_text(render(job))
    run = {"capture_output": True, "text": True, "cwd": job.workdir, "timeout": 120}
    try:
        cp = subprocess.run(["sbatch", "--parsable", str(script)], **run)
    except (OSError, subprocess.TimeoutExpired) as err:
        cp = subprocess.CompletedProcess([], 1, "", str(err))
    job_id = cp.stdout.strip().split(";")[0]
    if cp.returncode != 0 or not job_id.isdigit():
        shutil.rmtree(created) if created else script.unlink()  # leave nothing behind
        why = (cp.stderr.strip() or cp.stdout.strip() or "no output").splitlines()[-1]
        raise ConfigError(f"sbatch refused the job: {why}")
    return job_id


def cmd_submit(args: argparse.Namespace) -> int:
    job = plan(args)
    if args.dry_run:
        print(render(job), end="")
        return 0
    job_id, folder, name = submit(job), job.folder, f"sweep-{job.name}"
    workers = f"\n  workers: {folder}/worker-<array id>_<n>.out (the head job submits them)"
    print(
        f"submitted job {job_id}: sweep {job.name}, --mode {job.mode}\n"
        f"  log:     {folder}/slurm-{job_id}.out{workers * (job.mode == 'workers')}\n"
        f"  results: {folder}   MLflow: {job.tracking_uri}\n"
        f"  watch:   squeue --name={name}   tail -f {folder}/slurm-{job_id}.out\n"
        f"  cancel:  scancel --name={name}\n"
        f"  resume:  {job.resume}"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``sweep submit``."""
    s = sub.add_parser("submit", help="run a sweep as SLURM job(s), Ray over their nodes")
    s.add_argument("config", help="YAML sweep config, e.g. configs/digits_asha.yaml")
    s.add_argument(
        "--profile", required=True, help="cluster profile: discovery, local, or a .yaml file"
    )
    s.add_argument("--mode", help="single-job (one job, N nodes) or workers (head + GPU jobs)")
    count = s.add_mutually_exclusive_group()
    count.add_argument("--nodes", type=int, help="single-job: nodes in the job")
    count.add_argument("--workers", type=int, help="workers: worker jobs in the array")
    s.add_argument("--gpus-per-node", type=int, help="GPUs per node or per worker job")
    s.add_argument("--cpus-per-node", type=int, help="CPUs per node or per worker job")
    s.add_argument("--time", help="each job's time limit, [D-]HH:MM:SS")
    s.add_argument("--partition", help="partition of the job, or of the worker jobs")
    document.add_set_argument(s, "resources.gpu=0.5")
    s.add_argument("--name", help="the sweep's name (default: name in the config)")
    s.add_argument("--resume", action="store_true", help="continue the sweep in its folder")
    s.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    s.set_defaults(func=cmd_submit)
