#!/usr/bin/env bash
# `make gpu-check`: the GPU lane in one command (bench/gpu/gpu_check.py says what it runs and why).
#  - On a CUDA machine: installs the carried wheels (.whl/, from ../shared/tools/device-wheels.sh) into a
#    temporary folder with no network, installs embedx itself (editable, no deps), runs every part.
#  - Without CUDA: says so in one line, then runs the dry run (the whole plan, small sizes, on the CPU).
# Arguments go to gpu_check.py (--out DIR, --parts a,b, ...). EMBEDX_GPU_PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s)
PY=${EMBEDX_GPU_PYTHON:-python3}
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    site=${TMPDIR:-/tmp}/embedx-gpu-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
      || { echo "error: could not install the carried wheels in .whl/" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if ! "$PY" -c "import embedx.kernels, embedx.cli" >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
      || { echo "error: could not install embedx (pip install --no-deps --no-build-isolation -e .)" >&2; exit 1; }
  fi
  if ! "$PY" -c "import zarr, numcodecs, open_clip, embedx.kernels" >/dev/null 2>&1; then
    echo "error: embedx's dependencies do not import here; on a machine with no network carry .whl (bench/gpu/wheels.sh)" >&2
    exit 2
  fi
  unset TRITON_INTERPRET
  exec "$PY" bench/gpu/gpu_check.py --spent "$(( $(date +%s) - t0 ))" "$@"
fi
echo "gpu-check: no CUDA device here (torch sees none): running the dry run (the plan and each part at small size on the CPU)"
make -s venv || exit 1
TRITON_INTERPRET=1 exec .venv/bin/python bench/gpu/gpu_check.py --dry-run --out "${GPU_CHECK_DRY_OUT:-${TMPDIR:-/tmp}/embedx-gpu-check-dry}" "$@"
