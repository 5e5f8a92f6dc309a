#!/usr/bin/env bash
# The prepared device check (issue 24): benchmarks/gpu_check.py, after installing the wheels
# carried in .whl/ (RecBole and what the device image lacks) into /tmp/site. Arguments go to
# gpu_check.py, e.g.:  bash benchmarks/gpu_check.sh --out "$OUT"    (--reduced: CPU, < 1 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
