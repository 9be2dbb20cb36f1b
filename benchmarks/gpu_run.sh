#!/usr/bin/env bash
# On the GPU machine: install the carried wheels (.wheels/, from benchmarks/gpu_wheels.sh) that the machine's own
# packages do not already satisfy into /tmp/site, then run benchmarks/bench_gpu.py with them first on the path.
# Writes bench_gpu.json and bench_gpu.log into $OUT (or the current directory). Extra arguments go to the bench.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=/tmp/site
OUT=${OUT:-.}
mkdir -p "$OUT"

# Which carried wheels to install: those whose package is missing here or does not meet what the project needs.
# torchvision must match the installed torch, so it is only added when there is none.
wheels=$("$PYTHON" - <<'PY'
import glob
import importlib.metadata as metadata

from packaging.specifiers import SpecifierSet

NEEDS = {
    "transformers": "==5.24.0",
    "huggingface_hub": ">=1.31,<3",
    "tokenizers": ">=0.23.1,<0.24",
    "safetensors": ">=0.8.0",
    "regex": ">=2025.10.22",
    "decord": ">=0.6.0",
    "nvidia_ml_py": ">=12",
    "json_repair": "==0.64.6",
    "text2num": "==3.1.0",
    "torchvision": "",  # any installed one
}
chosen = []
for wheel in sorted(glob.glob(".wheels/*.whl")):
    name = wheel.split("/")[-1].split("-")[0]
    try:
        installed = metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        installed = None
    if installed is None or installed not in SpecifierSet(NEEDS.get(name, ""), prereleases=True):
        chosen.append(wheel)
print(" ".join(chosen))
PY
)
echo "installing into $SITE: ${wheels:-nothing}"
rm -rf "$SITE"
if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086
    if ! "$PYTHON" -m pip install --quiet --no-deps --no-index --target "$SITE" $wheels; then
        echo "pip install failed; unpacking the wheels instead"  # a wheel is a zip of the installed files
        "$PYTHON" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
            "$SITE" $wheels
    fi
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch, transformers, decord; print('torch', torch.__version__, 'transformers', transformers.__version__, 'decord', decord.__version__, 'cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PYTHON" benchmarks/bench_gpu.py --out "$OUT/bench_gpu.json" "$@" 2>&1 | tee "$OUT/bench_gpu.log"
exit "${PIPESTATUS[0]}"
