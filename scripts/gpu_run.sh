#!/usr/bin/env bash
# One call on a GPU machine: build everything with all cores, run the GPU tests (GoogleTest +
# pytest), compute-sanitizer on small cases, and the benchmark; logs and results go to OUTDIR.
#   scripts/gpu_run.sh OUTDIR [steps]     steps: comma list of build,gtest,pytestk,sanitize,
#                                         bench,profile,sass,phases,pytest (default: all but
#                                         sass and phases, in that order).
#   pytestk: the kernel tests (tests/python/test_kernels_gpu.py) alone; pytest: every pytest
#   file (after pytestk: the others). profile: Nsight Compute sections (speed of light, warp
#   stall reasons, scheduler, occupancy, memory, source counters) of the attention and selection
#   kernels at the seed shape, as text, plus the per-reason stall metrics of the attention
#   kernels (ncu_stalls.txt). sass: per-instruction stall sampling of the attention and
#   selection kernels (sass_<kernel>.csv.gz, Nsight Compute's source page; summary in sass.md,
#   scripts/sass_profile.py). phases: a lean BSK_ATTN_PROFILE build and the per-phase cycle
#   counts of the attention kernels (phases.md; scripts/attn_phases.py). BENCH_ARGS passes
#   flags to the bench. STEP_TIMEOUT (seconds, default 600) bounds each step.
#   BSK_COMMIT labels the results with the commit the tree holds: pass it in from the checkout
#   (a copy of the tree on another machine may carry an older HEAD; unset, the bench labels a
#   tree that differs from its HEAD as having uncommitted changes).
#   GPU_RUN_PACK=FILE.tgz packs OUTDIR into FILE after every step, so a call that is cut short
#   still hands back everything that ran.
# Headers that the machine may lack are taken from .deps/ when present (.deps/cutlass holds
# cute/ and cutlass/, .deps/googletest the GoogleTest sources).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_run.sh OUTDIR [steps]}
STEPS=${2:-build,gtest,pytestk,sanitize,bench,profile,pytest}
T=${STEP_TIMEOUT:-600}
mkdir -p "$OUT"
BUILD=${BUILD_DIR:-build-gpu}
PY=${PYTHON:-python3}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)  # the profile and sass steps
JOBS=$(nproc)
export PYTHONPATH="$PWD/python:$PWD/bench:${PYTHONPATH:-}"
has() { [[ ",$STEPS," == *",$1,"* ]]; }
pack() {
  [[ -n "${GPU_RUN_PACK:-}" ]] || return 0
  tar czf "$GPU_RUN_PACK.tmp" -C "$(dirname "$OUT")" "$(basename "$OUT")" && \
    mv "$GPU_RUN_PACK.tmp" "$GPU_RUN_PACK"
}
log() { echo "[gpu_run $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; pack; }
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
pack

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
  if timeout $T "$BUILD/bsk_tests" --gtest_brief=1 --gtest_output=xml:"$OUT/gtest.xml" > "$OUT/gtest.log" 2>&1; then
    log "gtest ok ($(( $(date +%s) - t0 )) s): $(grep -E '^\[  PASSED' "$OUT/gtest.log" | tail -n1)"
  else
    status=1; log "GTEST FAILED: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gtest.log" | tr '\n' ' ')"
    grep -B2 -A12 "Failure" "$OUT/gtest.log" | head -n 80
  fi
fi

run_pytest() {  # name, pytest arguments...
  local name=$1; shift
  t0=$(date +%s)
  if timeout $T $PY -m pytest -q "$@" --junitxml="$OUT/$name.xml" -p no:cacheprovider \
      > "$OUT/$name.log" 2>&1; then
    log "$name ok ($(( $(date +%s) - t0 )) s): $(tail -n1 "$OUT/$name.log")"
  else
    status=1; log "${name^^} FAILED ($(( $(date +%s) - t0 )) s): $(tail -n1 "$OUT/$name.log")"
    tail -n 60 "$OUT/$name.log"
  fi
}
if has pytestk; then
  run_pytest pytest_kernels tests/python/test_kernels_gpu.py
fi

if has sanitize; then
  for tool in memcheck racecheck; do
    if timeout $T compute-sanitizer --tool $tool --error-exitcode 9 $PY tests/python/sanitize_small.py \
        > "$OUT/sanitizer_$tool.log" 2>&1; then
      log "compute-sanitizer $tool clean: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -n1)"
    else
      status=1; log "COMPUTE-SANITIZER $tool FAILED"; tail -n 40 "$OUT/sanitizer_$tool.log"
    fi
  done
fi

if has bench; then
  t0=$(date +%s)
  if BSK_GIT_COMMIT=${BSK_COMMIT:-} timeout $T $PY bench/run_bench.py --out-dir "$OUT/bench" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1; then
    log "bench ok ($(( $(date +%s) - t0 )) s)"
  else
    status=1; log "BENCH FAILED ($(( $(date +%s) - t0 )) s)"; tail -n 40 "$OUT/bench.log"
  fi
fi
if has profile; then
  t0=$(date +%s)
  if timeout $T "$NCU" --clock-control none --target-processes all --kernel-name-base demangled \
      -k "regex:attention_fwd_sm90|select_smem_kernel" --launch-count 4 \
      --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
      --section Occupancy --section MemoryWorkloadAnalysis --section SourceCounters \
      $PY bench/profile.py --driver --shape seed > "$OUT/ncu_sections.txt" 2>&1; then
    log "ncu sections ok ($(( $(date +%s) - t0 )) s)"
  else
    status=1; log "NCU SECTIONS FAILED ($(( $(date +%s) - t0 )) s)"; tail -n 20 "$OUT/ncu_sections.txt"
  fi
  # Warp stall reasons per issued instruction, tensor-pipe activity and instruction counts of
  # the attention kernels at the seed shape (which stall bounds each kernel).
  t0=$(date +%s)
  STALLS="regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
  STALLS+=",sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"
  STALLS+=",smsp__inst_executed.sum,gpu__time_duration.sum"
  if timeout $T "$NCU" --clock-control none --target-processes all --kernel-name-base demangled \
      -k "regex:SparseKMode|DenseMode" --launch-count 3 --metrics "$STALLS" \
      $PY bench/profile.py --driver --shape seed > "$OUT/ncu_stalls.txt" 2>&1; then
    log "ncu stall reasons ok ($(( $(date +%s) - t0 )) s)"
  else
    status=1; log "NCU STALL REASONS FAILED ($(( $(date +%s) - t0 )) s)"; tail -n 20 "$OUT/ncu_stalls.txt"
  fi
  # Per-kernel summary (make bench-profile's report) at the tier-origin shape, where the
  # selection's share is largest.
  t0=$(date +%s)
  if BSK_GIT_COMMIT=${BSK_COMMIT:-} timeout $T $PY bench/profile.py --shape tier \
      --out-dir "$OUT/profile" > "$OUT/profile_tier.log" 2>&1; then
    log "bench-profile (tier shape) ok ($(( $(date +%s) - t0 )) s)"
  else
    status=1; log "BENCH-PROFILE (tier shape) FAILED"; tail -n 20 "$OUT/profile_tier.log"
  fi
fi

if has sass; then
  # Per-instruction warp-stall sampling (Nsight Compute's source page, SASS) of the SparseK and
  # dense attention kernels and the selection kernel at the seed shape: sass_<kernel>.csv.gz,
  # one row per SASS instruction with its samples by stall reason. (The reports themselves stay
  # in /tmp: they are large.)
  # Line info for the summary (scripts/sass_profile.py): the built extension's cubins through
  # nvdisasm (the build has -lineinfo).
  lines=""
  so=$(find "$PWD/$BUILD" "$PWD/python/blackwell_sparsek" -name "_C*.so" 2> /dev/null | head -n 1)
  xd=/tmp/bsk_sass_elf
  rm -rf "$xd" && mkdir -p "$xd"
  cuda_bin=$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")
  cuobj=$(command -v cuobjdump || echo "$cuda_bin/cuobjdump")
  nvdis=$(command -v nvdisasm || echo "$cuda_bin/nvdisasm")
  if [[ -n "$so" ]] && (cd "$xd" && "$cuobj" -xelf all "$so" > /dev/null 2>&1); then
    for c in "$xd"/*.cubin; do "$nvdis" --print-line-info-inline -c "$c"; done \
      > "$xd/all.sass" 2> /dev/null
    [[ -s "$xd/all.sass" ]] && lines="$xd/all.sass"
  fi
  {
    echo "# Per-instruction warp-stall sampling (Nsight Compute source page), seed shape"
    echo
    echo "Commit ${BSK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)};" \
      "$(date -u +%Y-%m-%d); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader |
      head -n 1)."
    echo "gpu_run.sh sass step: ncu --section SourceCounters --section WarpStateStats, one launch each"
    echo "(bench/profile.py --driver --shape seed), summarised by scripts/sass_profile.py."
    echo
  } > "$OUT/sass.md"
  for k in SparseKMode DenseMode select_smem_kernel; do
    t0=$(date +%s)
    rep=/tmp/bsk_sass_$k
    if timeout $T "$NCU" --clock-control none --target-processes all --kernel-name-base demangled \
        -k "regex:$k" --launch-count 1 --section SourceCounters --section WarpStateStats \
        --import-source no -f -o "$rep" $PY bench/profile.py --driver --shape seed \
        > "$OUT/sass_$k.log" 2>&1 &&
       "$NCU" -i "$rep.ncu-rep" --page source --csv --print-source sass > "$OUT/sass_$k.csv" \
        2>> "$OUT/sass_$k.log"; then
      "$NCU" -i "$rep.ncu-rep" --page details --print-details all >> "$OUT/sass_$k.log" 2>&1
      gzip -f "$OUT/sass_$k.csv"
      log "sass $k ok ($(( $(date +%s) - t0 )) s)"
      if [[ $k == select_smem_kernel ]]; then f=(--file sparsek_select_sm90.cu --depth 2); else f=(); fi
      $PY scripts/sass_profile.py "$OUT/sass_$k.csv.gz" ${lines:+--sass "$lines"} "${f[@]}" \
        >> "$OUT/sass.md" 2>> "$OUT/sass_$k.log" || log "SASS SUMMARY $k FAILED"
    else
      status=1; log "SASS $k FAILED ($(( $(date +%s) - t0 )) s)"; tail -n 20 "$OUT/sass_$k.log"
    fi
  done
fi

if has phases; then
  # A second, lean build with BSK_ATTN_PROFILE (its extension goes to its own package copy) and
  # the per-phase cycle counts of the attention kernels at the seed shape.
  PB="$BUILD-phases"
  t0=$(date +%s)
  source scripts/lean_build.sh
  if lean_build "$PWD/$PB" "$OUT/phases_configure.log" "$OUT/phases_build.log" OFF "$JOBS" \
       -DBSK_ATTN_PROFILE=ON; then
    log "phases build ok ($(( $(date +%s) - t0 )) s)"
    for c in dense_causal sparsek dense; do
      PYTHONPATH="$PWD/$PB/pkg:$PWD/bench" timeout $T $PY scripts/attn_phases.py run $c \
        > "$OUT/phases_$c.log" 2>&1 || { status=1; log "PHASES $c FAILED"; tail -n 5 "$OUT/phases_$c.log"; }
    done
    $PY scripts/attn_phases.py summarize "$OUT"/phases_{dense_causal,sparsek,dense}.log \
      > "$OUT/phases.md" 2>&1
    log "phases done ($(( $(date +%s) - t0 )) s)"
  else
    status=1; log "PHASES BUILD FAILED"; tail -n 30 "$OUT/phases_build.log" "$OUT/phases_configure.log"
  fi
fi

if has pytest; then
  if has pytestk; then
    run_pytest pytest_rest tests/python \
      --ignore tests/python/test_kernels_gpu.py
  else
    run_pytest pytest tests/python
  fi
fi
exit $status
