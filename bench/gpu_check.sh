#!/usr/bin/env bash
# The GPU checks in one go, under 5 minutes: the CUDA tests, the trainer benchmarks, where a
# step's device time goes (bench/kernels.py), then a small linear probe (bench/scale_gpu.py).
#
#     bash bench/gpu_check.sh OUT_DIR
#
# Needs only torch and the scientific stack (no Ray, MLflow, nor an installed package): it runs
# from the checkout with PYTHONPATH set to it. Each step's output goes to OUT_DIR/<step>.txt;
# OUT_DIR/summary.txt lists every step with its exit code and time. A failed step does not stop
# the later ones; the script exits non-zero if any step failed or could not run.
# On a GPU machine with torch but no pytest and no way to install it, copy pytest and its pure-
# Python dependencies (_pytest, pytest, pluggy, iniconfig, packaging, pygments, py.py) from a
# venv's site-packages into a folder that travels with the tree, and put it on PYTHONPATH.
set -uo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bash bench/gpu_check.sh OUT_DIR" >&2
    exit 2
fi
out=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root" || exit 2
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}
deadline=$((SECONDS + 285)) # the whole script stays under 5 minutes
summary="$out/summary.txt"
: >"$summary"
failed=0

# step NAME CAP_SECONDS COMMAND...: run it with its output in OUT_DIR/NAME.txt, capped at
# CAP_SECONDS and at what is left of the 5 minutes; record the outcome in the summary.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((deadline - SECONDS))
    ((cap > left)) && cap=$left
    if ((cap < 5)); then
        echo "$name: NOT RUN (out of time)" | tee -a "$summary"
        failed=1
        return
    fi
    echo "== $name (at most ${cap}s): $*"
    local start=$SECONDS rc=0
    timeout --kill-after=10 "$cap" "$@" >"$out/$name.txt" 2>&1 || rc=$?
    local took=$((SECONDS - start)) verdict=ok
    ((rc == 124 || rc == 137)) && verdict="TIMED OUT"
    ((rc != 0)) && [[ $verdict == ok ]] && verdict=FAILED
    ((rc != 0)) && failed=1
    echo "$name: $verdict (exit $rc, ${took}s) -> $out/$name.txt" | tee -a "$summary"
    tail -n 25 "$out/$name.txt"
}

{
    echo "host: $(hostname)  date: $(date -u +%FT%TZ)"
    "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} >"$out/environment.txt" 2>&1
cat "$out/environment.txt"
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device visible: the GPU tests skip themselves and nothing here is checked" |
        tee -a "$summary"
    failed=1
fi

if "$python" -c "import pytest" 2>/dev/null; then
    step test_gpu 150 "$python" -m pytest -p no:cacheprovider -q -m gpu tests/test_gpu.py
    step test_cuda_refused 40 "$python" -m pytest -p no:cacheprovider -q \
        "tests/test_trainer.py::test_cuda_refused_in_one_line_where_none_is_visible"
else
    echo "test_gpu: NOT RUN: pytest is not installed here (pip install pytest, then rerun)" |
        tee -a "$summary"
    failed=1
fi
step bench_trainer 100 "$python" bench/trainer.py
if [[ -f bench/fused.py ]]; then
    step bench_fused 60 "$python" bench/fused.py
else
    echo "bench_fused: skipped (no bench/fused.py in this checkout)" | tee -a "$summary"
fi
[[ -f bench/kernels.py ]] && step bench_kernels 60 "$python" bench/kernels.py
# ImageNet-shaped features and classes on a sixth of the rows: TF32 against float32, the
# device memory, and resources.gpu 0.25 (the full size: python bench/scale_gpu.py, minutes)
step bench_scale_gpu 90 "$python" bench/scale_gpu.py --n 200000 --configs 16 --epochs 3

echo
echo "== summary ($SECONDS s in all)"
cat "$summary"
grep -h "^targets:" "$out"/bench_*.txt 2>/dev/null
exit "$failed"
