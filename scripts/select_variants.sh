#!/usr/bin/env bash
# One GPU call: the selection kernel's build-flag candidates against the default build.
#   scripts/select_variants.sh OUTDIR "FLAGS ..."
# Builds two lean trees (/tmp/bsk_sel_base, /tmp/bsk_sel_cand: the default and the given
# CMAKE_CUDA_FLAGS, e.g. a candidate's -DBSK_SELECT_<NAME> guard), runs
# the GPU selection tests (GoogleTest SelectGpu.*, the selection and SparseK kernel tests of
# tests/python/test_kernels_gpu.py that the lean fp16/D=128 build can run) on the candidate, then
# times both builds, interleaved, at the seed shape and at S = 16384 / 65536
# (scripts/time_kernels.py --kernels: per-kernel CUDA times), and the phase cycles of both with
# BSK_SELECT_PROFILE. Logs and results go to OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/select_variants.sh OUTDIR FLAGS}
FLAGS=${2:?usage: scripts/select_variants.sh OUTDIR FLAGS (CUDA flags of the candidate build)}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
t0=$(date +%s)
build() {  # name, tests ON/OFF, cuda flags
  local b=/tmp/bsk_sel_$1 pk=/tmp/bsk_sel_$1/pkg
  mkdir -p "$pk" && rm -rf "$pk/blackwell_sparsek" && cp -r python/blackwell_sparsek "$pk/"
  local args=(-DCMAKE_BUILD_TYPE=Release -DBSK_LEAN=ON -DBSK_BUILD_TESTS="$2"
              -DBSK_PYTHON_MODULE_DIR="$pk/blackwell_sparsek"
              -DPython_EXECUTABLE="$(command -v $PY)" "-DCMAKE_CUDA_FLAGS=$3")
  [[ -f .deps/cutlass/cute/tensor.hpp ]] && args+=(-DBSK_CUTLASS_DIR="$PWD/.deps/cutlass")
  [[ -f .deps/googletest/CMakeLists.txt ]] && args+=(-DBSK_GTEST_SOURCE_DIR="$PWD/.deps/googletest")
  cmake -S . -B "$b" -G Ninja "${args[@]}" > "$OUT/configure_$1.log" 2>&1 &&
    cmake --build "$b" -j "$(nproc)" > "$OUT/build_$1.log" 2>&1
}
build cand ON "$FLAGS" || { echo "candidate build failed"; tail -n 30 "$OUT/build_cand.log"; exit 1; }
build base OFF "" || { echo "base build failed"; tail -n 30 "$OUT/build_base.log"; exit 1; }
build candprof OFF "$FLAGS -DBSK_SELECT_PROFILE" > /dev/null 2>&1 &
build baseprof OFF "-DBSK_SELECT_PROFILE" > /dev/null 2>&1 &
echo "builds: $(( $(date +%s) - t0 )) s"
timeout 300 /tmp/bsk_sel_cand/bsk_tests --gtest_filter='SelectGpu.*' --gtest_brief=1 \
  > "$OUT/gtest_cand.log" 2>&1
echo "SelectGpu (candidate) rc $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gtest_cand.log" | tr '\n' ' ')"
PYTHONPATH=/tmp/bsk_sel_cand/pkg:$PWD/bench timeout 300 $PY -m pytest -q -p no:cacheprovider \
  tests/python/test_kernels_gpu.py -k "select or sparsek" > "$OUT/pytest_cand.log" 2>&1
echo "kernel tests (candidate): $(tail -n 1 "$OUT/pytest_cand.log"); failures other than the" \
  "lean build's missing instantiations: $(grep -E '^E  ' "$OUT/pytest_cand.log" |
  grep -vc NotImplementedError)"
wait
TK="scripts/time_kernels.py --only sparsek --kernels --no-flash"
for rep in 1 2; do
  for shape in "--slope 0.000244140625" "--B 4 --S 16384 --slope 0.00006103515625" \
               "--B 1 --S 65536 --slope 0.0000152587890625"; do
    for v in base cand; do
      echo "== $v $shape (rep $rep)"
      PYTHONPATH=/tmp/bsk_sel_$v/pkg:$PWD/bench timeout 120 $PY $TK $shape 2>&1 |
        grep -E 'select|bsk_sparsek'
    done
  done
done 2>&1 | tee "$OUT/times.txt"
for v in baseprof candprof; do
  for shape in "--slope 0.000244140625" "--B 1 --S 65536 --slope 0.0000152587890625"; do
    echo "== $v $shape"
    PYTHONPATH=/tmp/bsk_sel_$v/pkg:$PWD/bench timeout 120 $PY $TK $shape 2>&1 |
      grep 'select profile' | sed -n '5,6p'
  done
done 2>&1 | tee "$OUT/phases.txt"
echo "total $(( $(date +%s) - t0 )) s"
