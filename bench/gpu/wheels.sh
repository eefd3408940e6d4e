#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (Python 3.12; it has torch, triton, numpy, scipy, scikit-learn, pyarrow, peft,
# timm, numba, ...), at the versions this repository is tested with on CPU, into .whl/ (git-ignored through
# .git/info/exclude). Carry .whl to the GPU machine; `make gpu-check` installs them there with no network.
# ../shared/tools/device-wheels.sh does the same with newer zarr/numcodecs than CI tests; prefer this one.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for p in open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 \
         google-crc32c==1.9.0 faiss-cpu==1.15.1 "$@"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl "$p" 2>&1 \
    | { grep -v "is ignored" || true; }
done
ls -1 .whl; du -sh .whl
