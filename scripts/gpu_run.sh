#!/usr/bin/env bash
# One call on a GPU machine: build everything with all cores, run the GPU tests (GoogleTest +
# pytest), compute-sanitizer on small cases, and the benchmark; logs and results go to OUTDIR.
#   scripts/gpu_run.sh OUTDIR [steps]     steps: comma list of build,gtest,pytest,sanitize,bench
#                                         (default: all). BENCH_ARGS passes flags to the bench.
# Headers that the machine may lack are taken from .deps/ when present (.deps/cutlass holds
# cute/ and cutlass/, .deps/googletest the GoogleTest sources).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_run.sh OUTDIR [steps]}
STEPS=${2:-build,gtest,pytest,sanitize,bench}
mkdir -p "$OUT"
BUILD=${BUILD_DIR:-build-gpu}
PY=${PYTHON:-python3}
JOBS=$(nproc)
export PYTHONPATH="$PWD/python:$PWD/bench:${PYTHONPATH:-}"
has() { [[ ",$STEPS," == *",$1,"* ]]; }
log() { echo "[gpu_run $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }
status=0

{
  # The GPU machine may get the tree without .git: the caller can pass BSK_COMMIT.
  echo "commit: ${BSK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -n 2 | head -n 1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if has build; then
  args=(-DCMAKE_BUILD_TYPE=Release -DBSK_PTXAS_VERBOSE=ON -DPython_EXECUTABLE="$(command -v $PY)")
  [[ -f .deps/cutlass/cute/tensor.hpp ]] && args+=(-DBSK_CUTLASS_DIR="$PWD/.deps/cutlass")
  [[ -f .deps/googletest/CMakeLists.txt ]] && args+=(-DBSK_GTEST_SOURCE_DIR="$PWD/.deps/googletest")
  t0=$(date +%s)
  if cmake -S . -B "$BUILD" -G Ninja "${args[@]}" > "$OUT/configure.log" 2>&1 &&
     cmake --build "$BUILD" -j "$JOBS" > "$OUT/build.log" 2>&1; then
    log "build ok ($(( $(date +%s) - t0 )) s)"
  else
    log "BUILD FAILED ($(( $(date +%s) - t0 )) s)"; tail -n 60 "$OUT/build.log" "$OUT/configure.log"; exit 1
  fi
  grep -A2 "Compiling entry function" "$OUT/build.log" | grep -E "entry function|registers|spill" > "$OUT/ptxas.txt" || true
fi

if has gtest; then
  t0=$(date +%s)
  if "$BUILD/bsk_tests" --gtest_brief=1 --gtest_output=xml:"$OUT/gtest.xml" > "$OUT/gtest.log" 2>&1; then
    log "gtest ok ($(( $(date +%s) - t0 )) s): $(grep -E '^\[  PASSED' "$OUT/gtest.log" | tail -n1)"
  else
    status=1; log "GTEST FAILED: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gtest.log" | tr '\n' ' ')"
    grep -B2 -A12 "Failure" "$OUT/gtest.log" | head -n 80
  fi
fi

if has pytest; then
  t0=$(date +%s)
  if $PY -m pytest -q tests/python --junitxml="$OUT/pytest.xml" -p no:cacheprovider > "$OUT/pytest.log" 2>&1; then
    log "pytest ok ($(( $(date +%s) - t0 )) s): $(tail -n1 "$OUT/pytest.log")"
  else
    status=1; log "PYTEST FAILED: $(tail -n1 "$OUT/pytest.log")"; tail -n 60 "$OUT/pytest.log"
  fi
fi

if has sanitize; then
  for tool in memcheck racecheck; do
    if compute-sanitizer --tool $tool --error-exitcode 9 $PY tests/python/sanitize_small.py \
        > "$OUT/sanitizer_$tool.log" 2>&1; then
      log "compute-sanitizer $tool clean: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -n1)"
    else
      status=1; log "COMPUTE-SANITIZER $tool FAILED"; tail -n 40 "$OUT/sanitizer_$tool.log"
    fi
  done
fi

if has bench; then
  t0=$(date +%s)
  if BSK_GIT_COMMIT=${BSK_COMMIT:-} $PY bench/run_bench.py --out-dir "$OUT/bench" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1; then
    log "bench ok ($(( $(date +%s) - t0 )) s)"
  else
    status=1; log "BENCH FAILED ($(( $(date +%s) - t0 )) s)"; tail -n 40 "$OUT/bench.log"
  fi
fi
exit $status
