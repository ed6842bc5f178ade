#!/usr/bin/env bash
# Attention-kernel variants in one GPU call: lean builds (fp16, D = 128) of the tree as it is
# and of each candidate's CUDA flags, built in parallel, then scripts/time_kernels.py on each in
# turn, REPS rounds (default 2), so that every variant is timed in the same process state.
#   scripts/attn_variants.sh OUTDIR FLAGS [FLAGS ...]
#   TK_ARGS: time_kernels.py arguments (default: --no-flash --kernels, the seed shape).
# Results: OUTDIR/time_<name>_<rep>.txt; OUTDIR.tgz packs OUTDIR after each round.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/attn_variants.sh OUTDIR FLAGS [FLAGS ...]}
shift
[[ $# -ge 1 ]] || { echo "usage: scripts/attn_variants.sh OUTDIR FLAGS [FLAGS ...]"; exit 2; }
PY=${PYTHON:-python3}
REPS=${REPS:-2}
TK_ARGS=${TK_ARGS:---no-flash --kernels}
mkdir -p "$OUT"
pack() { tar czf "$OUT.tgz.tmp" -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv "$OUT.tgz.tmp" "$OUT.tgz"; }
build() {  # name, cuda flags
  local b=/tmp/bsk_av_$1 pk=/tmp/bsk_av_$1/pkg
  mkdir -p "$pk" && rm -rf "$pk/blackwell_sparsek" && cp -r python/blackwell_sparsek "$pk/"
  local args=(-DCMAKE_BUILD_TYPE=Release -DBSK_LEAN=ON -DBSK_BUILD_TESTS=OFF
              -DBSK_PYTHON_MODULE_DIR="$pk/blackwell_sparsek"
              -DPython_EXECUTABLE="$(command -v $PY)" "-DCMAKE_CUDA_FLAGS=$2")
  [[ -f .deps/cutlass/cute/tensor.hpp ]] && args+=(-DBSK_CUTLASS_DIR="$PWD/.deps/cutlass")
  cmake -S . -B "$b" -G Ninja "${args[@]}" > "$OUT/configure_$1.log" 2>&1 &&
    cmake --build "$b" -j "$3" > "$OUT/build_$1.log" 2>&1 || touch "$OUT/build_$1.failed"
}
t0=$(date +%s)
names=(base)
jobs=$(( $(nproc) / ($# + 1) )); (( jobs < 2 )) && jobs=2
build base "" "$jobs" &
i=0
for f in "$@"; do
  i=$((i + 1)); names+=("c$i")
  echo "c$i: $f" | tee -a "$OUT/variants.txt"
  build "c$i" "$f" "$jobs" &
done
wait
echo "builds: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/variants.txt"
for r in $(seq 1 "$REPS"); do
  for n in "${names[@]}"; do
    [[ -f "$OUT/build_$n.failed" ]] && { echo "$n: build failed"; continue; }
    PYTHONPATH="/tmp/bsk_av_$n/pkg:$PWD/bench" timeout 300 $PY scripts/time_kernels.py $TK_ARGS \
      > "$OUT/time_${n}_$r.txt" 2>&1
    echo "== $n rep $r"; cat "$OUT/time_${n}_$r.txt"
  done
  pack
done
