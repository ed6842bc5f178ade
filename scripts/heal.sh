#!/usr/bin/env bash
# Checks the toolchain, installs what is missing (pip; apt when root), prints an environment
# report. --quiet: install silently, print only problems.
set -uo pipefail
PY=${PYTHON:-python3}
QUIET=0
[[ "${1:-}" == "--quiet" ]] && QUIET=1
say() { [[ $QUIET == 1 ]] || echo "$@"; }

need_pip=()
$PY -c "import torch" 2>/dev/null || need_pip+=("torch==2.11.0")
$PY -c "import numpy" 2>/dev/null || need_pip+=("numpy")
$PY -c "import pytest" 2>/dev/null || need_pip+=("pytest")
$PY -c "import nanobind" 2>/dev/null || need_pip+=("nanobind>=2.4")
$PY -c "import scikit_build_core" 2>/dev/null || need_pip+=("scikit-build-core>=0.10")
$PY -c "import cutlass_library" 2>/dev/null || need_pip+=("nvidia-cutlass==4.2.0.0")
$PY -c "import matplotlib" 2>/dev/null || need_pip+=("matplotlib")
# CMake >= 3.27 (older releases do not know the CUDA 13 toolchain's C++20 dialect).
cmake_ok=$(cmake --version 2>/dev/null | head -n1 | awk '{split($3, v, "."); print (v[1] > 3 || (v[1] == 3 && v[2] >= 27)) ? 1 : 0}')
[[ "$cmake_ok" == 1 ]] || need_pip+=("cmake>=3.27,<4")
command -v ninja >/dev/null || need_pip+=("ninja")
if (( ${#need_pip[@]} )); then
  echo "heal: pip install ${need_pip[*]}"
  $PY -m pip install -q "${need_pip[@]}" || { echo "heal: pip install failed" >&2; exit 1; }
fi

hash -r
if [[ ! -f /usr/src/googletest/CMakeLists.txt && ! -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake && ! -d "${BSK_GTEST_SOURCE_DIR:-/nonexistent}" ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "heal: apt-get install libgtest-dev"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libgtest-dev >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libgtest-dev >/dev/null; }
  else
    echo "heal: GoogleTest missing and cannot apt-get (not root); set BSK_GTEST_SOURCE_DIR" >&2
  fi
fi

[[ $QUIET == 1 ]] && exit 0
echo "== BlackwellSparseK environment =="
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | sed 's/^/GPU: /'
else
  echo "GPU: none visible (GPU tests will skip; make bench needs an H100/H200)"
fi
if command -v nvcc >/dev/null; then nvcc --version | tail -n 2 | head -n 1 | sed 's/^/CUDA: /'
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then /usr/local/cuda/bin/nvcc --version | tail -n 2 | head -n 1 | sed 's/^/CUDA: /'
else echo "CUDA: nvcc not found (the library builds CPU-only)"; fi
echo "cmake: $(cmake --version | head -n1)"
$PY - <<'PYEOF'
import importlib, os
def ver(m):
    try:
        mod = importlib.import_module(m)
        return getattr(mod, "__version__", "importable")
    except Exception as e:
        return f"not installed ({type(e).__name__})"
import torch
print(f"python: {os.sys.version.split()[0]}")
print(f"torch: {torch.__version__} (CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()})")
if torch.cuda.is_available():
    print(f"cuDNN: {torch.backends.cudnn.version()}")
try:
    import cutlass_library
    print("CUTLASS headers:", os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include"))
except Exception:
    print("CUTLASS headers: not installed")
print("nanobind:", ver("nanobind"))
print("triton:", ver("triton"))
try:
    from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    print("FlexAttention: importable")
except Exception as e:
    print(f"FlexAttention: not importable ({e})")
print("xformers:", ver("xformers"))
print("flash-attn-4 (flash_attn.cute):", ver("flash_attn.cute"))
try:
    import sys; sys.path.insert(0, "python")
    from blackwell_sparsek import _C
    print("blackwell_sparsek._C:", _C.build_info())
except Exception as e:
    print(f"blackwell_sparsek._C: not built ({type(e).__name__})")
PYEOF
