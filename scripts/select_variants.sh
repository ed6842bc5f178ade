#!/usr/bin/env bash
# One GPU call: selection-kernel build-flag candidates against the default build.
#   scripts/select_variants.sh OUTDIR "FLAGS ..." ["FLAGS ..." ...]
# Builds lean trees in parallel (/tmp/bsk_sel_base, /tmp/bsk_sel_c1, c2, ...: the default and
# each given CMAKE_CUDA_FLAGS, e.g. a candidate's -DBSK_SELECT_<NAME> guards, plus a
# BSK_SELECT_PROFILE tree of each), runs the GPU selection tests (GoogleTest SelectGpu.*, the
# selection and SparseK kernel tests of tests/python/test_kernels_gpu.py that the lean
# fp16/D=128 build can run) on every candidate, then times all builds, interleaved, at the seed
# shape and at S = 16384 / 65536 (scripts/time_kernels.py --kernels: per-kernel CUDA times), and
# the phase cycles of each with BSK_SELECT_PROFILE (between the two timing reps). Logs and
# results go to OUTDIR, packed into OUTDIR.tgz after each section (a call cut short still hands
# back what ran).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lean_build.sh
OUT=${1:?usage: scripts/select_variants.sh OUTDIR FLAGS [FLAGS ...]}
shift
[[ $# -ge 1 ]] || { echo "usage: scripts/select_variants.sh OUTDIR FLAGS [FLAGS ...]"; exit 2; }
CANDS=("$@")
PY=${PYTHON:-python3}
mkdir -p "$OUT"
t0=$(date +%s)
pack() { pack_dir "$OUT"; }
build() {  # name, tests ON/OFF, cuda flags
  lean_build "/tmp/bsk_sel_$1" "$OUT/configure_$1.log" "$OUT/build_$1.log" "$2" 4 \
    "-DCMAKE_CUDA_FLAGS=$3" || touch "$OUT/build_$1.failed"
}
names=(base)
build base OFF "" &
build baseprof OFF "-DBSK_SELECT_PROFILE" &
for i in "${!CANDS[@]}"; do
  c=c$((i + 1))
  names+=("$c")
  echo "$c: ${CANDS[$i]}"
  build "$c" ON "${CANDS[$i]}" &
  build "${c}prof" OFF "${CANDS[$i]} -DBSK_SELECT_PROFILE" &
done
wait
echo "builds: $(( $(date +%s) - t0 )) s"
for v in "${names[@]}"; do
  for b in "$v" "${v}prof"; do
    [[ -f $OUT/build_$b.failed ]] && { echo "$b build failed"; tail -n 30 "$OUT/build_$b.log"; exit 1; }
  done
done
for i in "${!CANDS[@]}"; do
  c=c$((i + 1))
  timeout 300 /tmp/bsk_sel_$c/bsk_tests --gtest_filter='SelectGpu.*' --gtest_brief=1 \
    > "$OUT/gtest_$c.log" 2>&1
  echo "SelectGpu ($c) rc $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gtest_$c.log" | tr '\n' ' ')"
  PYTHONPATH=/tmp/bsk_sel_$c/pkg:$PWD/bench timeout 300 $PY -m pytest -q -p no:cacheprovider \
    tests/python/test_kernels_gpu.py -k "select or sparsek" > "$OUT/pytest_$c.log" 2>&1
  echo "kernel tests ($c): $(tail -n 1 "$OUT/pytest_$c.log"); failures other than the" \
    "lean build's missing instantiations: $(grep -E '^E  ' "$OUT/pytest_$c.log" |
    grep -vc NotImplementedError)"
done
pack
TK="scripts/time_kernels.py --only sparsek --kernels --no-flash"
times() {  # rep
  for shape in "--slope 0.000244140625" "--B 4 --S 16384 --slope 0.00006103515625" \
               "--B 1 --S 65536 --slope 0.0000152587890625"; do
    for v in "${names[@]}"; do
      echo "== $v $shape (rep $1)"
      PYTHONPATH=/tmp/bsk_sel_$v/pkg:$PWD/bench timeout 120 $PY $TK $shape 2>&1 |
        grep -E 'select|bsk_sparsek'
    done
  done
}
times 1 2>&1 | tee "$OUT/times.txt"
for v in "${names[@]}"; do
  for shape in "--slope 0.000244140625" "--B 1 --S 65536 --slope 0.0000152587890625"; do
    echo "== ${v}prof $shape"
    PYTHONPATH=/tmp/bsk_sel_${v}prof/pkg:$PWD/bench timeout 120 $PY $TK $shape 2>&1 |
      grep 'select profile' | sed -n '5,6p'
  done
done 2>&1 | tee "$OUT/phases.txt"
pack
times 2 2>&1 | tee -a "$OUT/times.txt"
echo "total $(( $(date +%s) - t0 )) s"
pack
