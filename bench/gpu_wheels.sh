#!/usr/bin/env bash
# Wheels for a GPU box that has torch, transformers and accelerate but no DeepSpeed and no network
# (a rented machine you copy files to): DeepSpeed built here without its CUDA ops (they compile
# just in time there), and the pure-Python packages it needs that such boxes lack, for CPython 3.12.
#
#   bash bench/gpu_wheels.sh [DIR]           (default exp/wheels; ~5 MB)
#   # on the GPU box:
#   python3 -m pip install --no-deps DIR/*.whl && bash bench/gpu_check.sh
set -euo pipefail
DIR=${1:-exp/wheels}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$DIR"
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
# DeepSpeed's setup imports torch: build against the local one, in this environment.
"$PY" -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w "$DIR" 2>&1 | quiet
# pydantic with its matching pydantic-core (a compiled wheel, so the target's Python and platform).
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$DIR" "pydantic>=2,<3" hjson 2>&1 | quiet
ls -1 "$DIR"
du -sh "$DIR" | cut -f1
