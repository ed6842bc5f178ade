# Sourced by the scripts that build lean trees (fp16, D = 128 kernels) next to the main build:
# scripts/attn_variants.sh, select_variants.sh, select_knobs.sh and gpu_run.sh's phases step.
# Run from the repository root.

# lean_build DIR CONFIGURE_LOG BUILD_LOG TESTS(ON|OFF) JOBS [CMAKE_ARGS ...]
# Configures and builds DIR; the extension goes to DIR/pkg/blackwell_sparsek, a copy of the
# Python package (PYTHONPATH=DIR/pkg imports this build). Headers the machine may lack are taken
# from .deps/ when present. Returns cmake's status.
lean_build() {
  local b=$1 conf_log=$2 build_log=$3 tests=$4 jobs=$5
  shift 5
  local pk=$b/pkg
  mkdir -p "$pk" && rm -rf "$pk/blackwell_sparsek" && cp -r python/blackwell_sparsek "$pk/"
  local args=(-DCMAKE_BUILD_TYPE=Release -DBSK_LEAN=ON -DBSK_BUILD_TESTS="$tests"
              -DBSK_PYTHON_MODULE_DIR="$pk/blackwell_sparsek"
              -DPython_EXECUTABLE="$(command -v "${PYTHON:-python3}")" "$@")
  [[ -f .deps/cutlass/cute/tensor.hpp ]] && args+=(-DBSK_CUTLASS_DIR="$PWD/.deps/cutlass")
  [[ -f .deps/googletest/CMakeLists.txt ]] && args+=(-DBSK_GTEST_SOURCE_DIR="$PWD/.deps/googletest")
  cmake -S . -B "$b" -G Ninja "${args[@]}" > "$conf_log" 2>&1 &&
    cmake --build "$b" -j "$jobs" > "$build_log" 2>&1
}

# pack_dir DIR: DIR packed into DIR.tgz (atomically), so a call cut short still returns it.
pack_dir() {
  tar czf "$1.tgz.tmp" -C "$(dirname "$1")" "$(basename "$1")" && mv "$1.tgz.tmp" "$1.tgz"
}
