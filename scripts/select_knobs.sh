#!/usr/bin/env bash
# One GPU call: the selection's development knobs (environment variables read by
# src/kernels/sm90/sparsek_select_sm90.cu) around the defaults, on one lean build.
#   scripts/select_knobs.sh OUTDIR
# Builds the lean tree /tmp/bsk_knobs (tests on), runs the GPU selection tests (SelectGpu.*, the
# selection and SparseK kernel tests the lean build can run), then times the selection
# (scripts/time_kernels.py --kernels) at the seed shape, S = 16384 (B 4) and S = 65536 (B 1) under
# each knob setting, with the defaults timed first and last at each shape (the run's noise).
# Logs and results go to OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lean_build.sh
OUT=${1:?usage: scripts/select_knobs.sh OUTDIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
t0=$(date +%s)
b=/tmp/bsk_knobs pk=/tmp/bsk_knobs/pkg
lean_build "$b" "$OUT/configure.log" "$OUT/build.log" ON "$(nproc)" ||
  { echo "build failed"; tail -n 30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
timeout 300 "$b/bsk_tests" --gtest_filter='SelectGpu.*' --gtest_brief=1 > "$OUT/gtest.log" 2>&1
echo "SelectGpu rc $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gtest.log" | tr '\n' ' ')"
PYTHONPATH=$pk:$PWD/bench timeout 300 $PY -m pytest -q -p no:cacheprovider \
  tests/python/test_kernels_gpu.py -k "select or sparsek" > "$OUT/pytest.log" 2>&1
echo "kernel tests: $(tail -n 1 "$OUT/pytest.log"); failures other than the lean build's" \
  "missing instantiations: $(grep -E '^E  ' "$OUT/pytest.log" | grep -vc NotImplementedError)"
TK="scripts/time_kernels.py --only sparsek --kernels --no-flash"
run() {  # shape args, then knob settings (NAME=VALUE ...) or "default"
  local shape=$1; shift
  for knobs in "$@"; do
    echo "== $shape | $knobs"
    local envs=(); [[ $knobs != default ]] && read -ra envs <<< "$knobs"
    env "${envs[@]}" PYTHONPATH=$pk:$PWD/bench timeout 120 $PY $TK $shape 2>&1 |
      grep -E 'select|bsk_sparsek'
  done
}
{
  run "--slope 0.000244140625" default BSK_SELECT_CHUNKS=192 BSK_SELECT_CHUNKS=256 \
    BSK_SELECT_GTABLE_WDLOG=6 BSK_SELECT_GTABLE_WDLOG=8 default
  run "--B 4 --S 16384 --slope 0.00006103515625" default BSK_SELECT_CHUNKS_BIG=64 \
    BSK_SELECT_CHUNKS_BIG=96 BSK_SELECT_WDLOG=7 BSK_SELECT_WDLOG=8 default
  run "--B 1 --S 65536 --slope 0.0000152587890625" default BSK_SELECT_GLOBAL_CHUNKS=128 default
} 2>&1 | tee "$OUT/times.txt"
echo "total $(( $(date +%s) - t0 )) s"
