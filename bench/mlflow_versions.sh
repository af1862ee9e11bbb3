#!/usr/bin/env bash
# tests/test_bulk_writes.py against other MLflow versions: each installed (without its
# dependencies) over the project's venv, so that sweeps.tracking.bulk.CHECKED names only
# versions whose reads were compared with its writes.
#
#   bash bench/mlflow_versions.sh 2.16.2 3.0.1 ...     (default: the list below)
# Prints one line per version: passed, failed (with pytest's last line) or not installed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
versions=("$@")
# the newest patch release of each minor version the project accepts (about a minute each)
[ ${#versions[@]} -gt 0 ] || versions=(2.16.2 2.17.2 2.18.0 2.19.0 2.20.4 2.21.3 2.22.5
    3.0.1 3.1.4 3.2.0 3.3.2 3.4.0 3.5.1 3.6.0 3.7.0 3.8.1 3.9.0 3.10.1 3.11.1 3.12.0 3.13.0
    3.14.0 3.15.2 3.16.1 3.17.2 3.18.0)
root=${TMPDIR:-/tmp}/sweeps-mlflow-versions
for v in "${versions[@]}"; do
    dir="$root/$v"
    pkgs=("mlflow==$v" "mlflow-skinny==$v")
    # MLflow before 3.15 imports what SQLAlchemy 2.1 removed; 3.x before 3.18 ships its
    # tracing package apart (of the same minor version)
    minor=${v#*.}; minor=${minor%%.*}
    [[ $v == 2.* || $minor -lt 15 ]] && pkgs+=("sqlalchemy<2.1")
    [[ $v == 3.* && $minor -lt 18 ]] && pkgs+=("mlflow-tracing~=${v%.*}.0")
    if [ ! -d "$dir/mlflow" ] && ! .venv/bin/pip install -q --no-deps --target "$dir" "${pkgs[@]}" >"$root.$v.log" 2>&1; then
        echo "mlflow $v: not installed ($(tail -1 "$root.$v.log"))"
        continue
    fi
    out=$(XDG_CACHE_HOME="$root/cache" PYTHONPATH="$dir" .venv/bin/python -m pytest -q -p no:cacheprovider \
        tests/test_bulk_writes.py -k "not only_where" 2>&1)
    got=$(PYTHONPATH="$dir" .venv/bin/python -c "import mlflow; print(mlflow.__version__)" 2>&1 | tail -1)
    if [ "$got" != "$v" ]; then
        echo "mlflow $v: not importable over this venv ($got)"
    elif echo "$out" | tail -1 | grep -q "passed" && ! echo "$out" | tail -1 | grep -q "failed\|error"; then
        echo "mlflow $v: passed ($(echo "$out" | tail -1))"
    else
        echo "mlflow $v: FAILED ($(echo "$out" | grep -m3 "Error\|assert" | tr '\n' ' ' | cut -c1-300))"
    fi
done
