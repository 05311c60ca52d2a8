#!/usr/bin/env bash
# The GPU table on a bare, offline GPU machine that has jax, flax, optax, orbax and chex
# but not llm_jax's other dependencies (ml-collections, tensorboardX, tqdm,
# importlib_resources) nor TensorFlow.
#
#   experiments/gpu_bench/device.sh prepare INPUT_TXT   # here, with the package index reachable
#   experiments/gpu_bench/device.sh run [run.py flags]  # there, in a copy of this checkout
#
# `prepare` puts those four pure-Python wheels (any Python 3, no compiled parts) and
# Tiny Shakespeare's input.txt into .device/ (git-ignored; carry it to the machine;
# $GPU_BENCH_DEVICE_DIR names another folder).
# `run` installs the wheels offline without their dependencies (the machine's own
# jax stack stays as it is), runs experiments/gpu_bench/run.py with its work files in
# $GPU_BENCH_WORK (default /tmp/gpu_bench), and copies only the small results into
# $OUT (default runs/gpu_bench): gpu_bench.json, gpu_bench.md, log.txt and device.txt
# (GPU, driver, jax version). Each part is stopped after $PART_TIMEOUT_S seconds
# (default 140), so the four parts end within the device tool's 10-minute limit
# on one command.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dev=${GPU_BENCH_DEVICE_DIR:-$root/.device}
WHEELS=(ml-collections tensorboardX tqdm importlib_resources)

usage() {
  echo "usage: $0 prepare INPUT_TXT | $0 run [run.py flags]" >&2
  exit 2
}

case "${1:-}" in
  prepare)
    [ $# -eq 2 ] || usage
    [ -s "$2" ] || { echo "$0: $2 is not a non-empty file (Tiny Shakespeare's input.txt)" >&2; exit 2; }
    mkdir -p "$dev/wheels" "$dev/data"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dev/wheels" "${WHEELS[@]}"
    for w in "$dev"/wheels/*.whl; do
      case "$w" in
        *-none-any.whl) ;;
        *) echo "$0: $w is not a pure-Python wheel; it may not install on the GPU machine" >&2; exit 1 ;;
      esac
    done
    install -m 644 "$2" "$dev/data/input.txt"
    ls -l "$dev/wheels" "$dev/data"
    ;;
  run)
    shift
    out=${OUT:-$root/runs/gpu_bench}
    work=${GPU_BENCH_WORK:-/tmp/gpu_bench}
    mkdir -p "$out" "$work"
    shopt -s nullglob
    wheels=("$dev"/wheels/*.whl)
    if [ ${#wheels[@]} -gt 0 ]; then
      python3 -m pip install --quiet --no-index --no-deps "${wheels[@]}"
    fi
    manual=()
    [ -f "$dev/data/input.txt" ] && manual=("--manual_dir=$dev/data")
    {
      date -u
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
      python3 -c 'import sys, jax, flax, optax; print(sys.version.split()[0], "jax", jax.__version__,
"flax", flax.__version__, "optax", optax.__version__, jax.devices())' 2>&1
    } >"$out/device.txt"
    cat "$out/device.txt"
    status=0
    PYTHONUNBUFFERED=1 python3 "$root/experiments/gpu_bench/run.py" --out="$work" \
      --timeout_s="${PART_TIMEOUT_S:-140}" "${manual[@]}" "$@" 2>&1 | tee "$out/log.txt" || status=$?
    for f in gpu_bench.json gpu_bench.md; do
      [ -f "$work/$f" ] && cp "$work/$f" "$out/"
    done
    exit "$status"
    ;;
  *)
    usage
    ;;
esac
