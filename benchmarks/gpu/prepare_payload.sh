#!/usr/bin/env bash
# Fill benchmarks/gpu/payload/ (git-ignored) with what the GPU machine lacks, and print its size:
#   wheels/  faiss-cpu, pydantic (+ pydantic-core, annotated-types, typing-inspection, typing-extensions),
#            PyYAML, tqdm, pytest (+ pluggy, iniconfig, packaging, pygments), pytest-timeout
#   data/fashion-mnist/  the four official *-ubyte.gz files (from $LETKD_DATA or /usr/share/datasets)
# Wheels for CPython $PY_VERSIONS (default 3.10 3.11 3.12; faiss-cpu is one abi3 wheel for all of them).
# The payload travels with the code to the GPU machine, at most 64 MiB in all.
set -eu
cd "$(dirname "$0")"
PY_VERSIONS="${PY_VERSIONS:-3.10 3.11 3.12}"
PIP="${PIP:-python3 -m pip}"
mkdir -p payload/wheels payload/data/fashion-mnist
PACKAGES="faiss-cpu pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml tqdm
pytest pluggy iniconfig packaging pygments pytest-timeout"
for v in $PY_VERSIONS; do
  $PIP download -q --only-binary=:all: --no-deps --implementation cp --python-version "$v" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d payload/wheels $PACKAGES
done
SRC="${LETKD_DATA:-}/fashion-mnist"
[ -f "$SRC/train-images-idx3-ubyte.gz" ] || SRC=/usr/share/datasets/fashion-mnist
cp -u "$SRC"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz payload/data/fashion-mnist/
du -b payload/wheels/* | sort -n | awk '{printf "%8.1f MB  %s\n", $1/1e6, $2}'
total=$(du -sb payload | cut -f1)
echo "payload: $(awk -v t="$total" 'BEGIN{printf "%.1f MiB", t/1048576}') (limit 64 MiB)"
[ "$total" -le $((64 * 1048576)) ] || { echo "payload over 64 MiB: drop a Python version (PY_VERSIONS)"; exit 1; }
