#!/usr/bin/env bash
# Download, into .wheels/ (git-ignored), what benchmarks/bench_gpu.py needs on a GPU machine that has no network
# and only torch, transformers 5.17, OpenCV, Pillow, numpy, pandas and pyarrow: the transformers release this
# project expects and the libraries it requires, decord (frame decoding), json-repair and text2num (imported by
# the scoring and cognitive-map modules), nvidia-ml-py (the GPU busy fraction), and torchvision for torch 2.11
# (installed there only if missing). Python 3.12 on x86-64 unless PY is set.
# Afterwards: carry .wheels to the GPU machine and run benchmarks/gpu_run.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PY=${PY:-3.12}
DEST=.wheels
LIMIT_MIB=64

mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
    --python-version "$PY" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
    transformers==5.24.0 huggingface_hub==1.33.0 tokenizers==0.23.3 safetensors==0.8.0 regex==2026.11.19 \
    decord==0.6.0 nvidia-ml-py==13.590.48 torchvision==0.26.0 json-repair==0.64.6 text2num==3.1.0

ls -l "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f 1)
echo "total: $((total / 1024 / 1024)) MiB of $LIMIT_MIB MiB"
if [ "$total" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo "error: the wheels exceed $LIMIT_MIB MiB" >&2
    exit 1
fi
