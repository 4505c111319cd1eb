#!/usr/bin/env bash
# The GPU check in one command (CUDA tests, claim on Fashion-MNIST, speed), within --budget-s seconds.
#   bash benchmarks/gpu/run.sh [--budget-s 330] [--dry-run] [--stages tests,claim,speed]
# Installs what the machine lacks from the wheels in benchmarks/gpu/payload/wheels (no network), uses the
# Fashion-MNIST files in benchmarks/gpu/payload/data/fashion-mnist (both put there by prepare_payload.sh),
# runs letkd from src/ (PYTHONPATH) and writes everything under $OUT (default runs/gpu).
set -u
cd "$(dirname "$0")/../.."
PAYLOAD=benchmarks/gpu/payload
export OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT/logs"
PY="${PYTHON:-python3}"
missing=$("$PY" - <<'PYEOF'
import importlib.util as u
need = {"faiss": "faiss-cpu", "pydantic": "pydantic", "yaml": "pyyaml", "tqdm": "tqdm", "pytest": "pytest",
        "pytest_timeout": "pytest-timeout"}
print(" ".join(pkg for mod, pkg in need.items() if u.find_spec(mod) is None))
PYEOF
)
for pkg in $missing; do  # one at a time: a package that cannot be installed does not block the others
  echo "installing $pkg from $PAYLOAD/wheels"
  "$PY" -m pip install -q --no-index --find-links "$PAYLOAD/wheels" "$pkg" >>"$OUT/logs/pip.log" 2>&1 \
    || { echo "pip install $pkg failed (see $OUT/logs/pip.log)"; tail -3 "$OUT/logs/pip.log"; }
done
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA_ARGS=()
[ -d "$PAYLOAD/data/fashion-mnist" ] && DATA_ARGS=(--data "$PAYLOAD/data")
exec "$PY" -m benchmarks.gpu.run --out "$OUT" ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} "$@"
