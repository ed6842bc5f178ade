#!/usr/bin/env bash
# Attention-kernel variants in one GPU call: lean builds (fp16, D = 128) of the tree as it is
# and of each candidate's CUDA flags, built in parallel, then scripts/time_kernels.py on each in
# turn, REPS rounds (default 2), so that every variant is timed in the same process state.
#   scripts/attn_variants.sh OUTDIR FLAGS [FLAGS ...]
#   TK_ARGS: time_kernels.py arguments (default: --no-flash --kernels and the bench's score
#   slope at the seed shape, 1 / 4096; time_kernels.py's own default slope is 0.001).
# Results: OUTDIR/pytest_<name>.log (each candidate's kernel tests), OUTDIR/time_<name>_<rep>.txt;
# OUTDIR.tgz packs OUTDIR after each round.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lean_build.sh
OUT=${1:?usage: scripts/attn_variants.sh OUTDIR FLAGS [FLAGS ...]}
shift
[[ $# -ge 1 ]] || { echo "usage: scripts/attn_variants.sh OUTDIR FLAGS [FLAGS ...]"; exit 2; }
PY=${PYTHON:-python3}
REPS=${REPS:-2}
TK_ARGS=${TK_ARGS:---no-flash --kernels --slope 0.000244140625}
mkdir -p "$OUT"
build() {  # name, cuda flags, jobs
  lean_build "/tmp/bsk_av_$1" "$OUT/configure_$1.log" "$OUT/build_$1.log" OFF "$3" \
    "-DCMAKE_CUDA_FLAGS=$2" || touch "$OUT/build_$1.failed"
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
# Each candidate's attention kernel tests first (AV_TESTS=0 skips them): a timing of a variant
# that computes something else means nothing. The lean build has fp16 / D = 128 only, so the
# other cases fail with NotImplementedError; any other failure is counted.
if [[ ${AV_TESTS:-1} != 0 ]]; then
  for n in "${names[@]:1}"; do
    [[ -f "$OUT/build_$n.failed" ]] && continue
    PYTHONPATH="/tmp/bsk_av_$n/pkg:$PWD/bench" timeout 300 $PY -m pytest -q -p no:cacheprovider \
      tests/python/test_kernels_gpu.py > "$OUT/pytest_$n.log" 2>&1
    echo "kernel tests ($n): $(tail -n 1 "$OUT/pytest_$n.log"); failures other than the lean" \
      "build's missing instantiations: $(grep -E '^E  ' "$OUT/pytest_$n.log" |
      grep -vc NotImplementedError)" | tee -a "$OUT/variants.txt"
  done
  pack_dir "$OUT"
fi
for r in $(seq 1 "$REPS"); do
  for n in "${names[@]}"; do
    [[ -f "$OUT/build_$n.failed" ]] && { echo "$n: build failed"; continue; }
    PYTHONPATH="/tmp/bsk_av_$n/pkg:$PWD/bench" timeout 300 $PY scripts/time_kernels.py $TK_ARGS \
      > "$OUT/time_${n}_$r.txt" 2>&1
    echo "== $n rep $r"; cat "$OUT/time_${n}_$r.txt"
  done
  pack_dir "$OUT"
done
