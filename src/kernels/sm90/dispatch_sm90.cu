// Runtime flags -> template instantiations. Which instantiations exist is decided by the build
// (CMake defines BSK_INST_<FILE NAME>=1 for each generated file it compiles); a missing one is
// reported as "not implemented in this build", never silently replaced.
#include <cuda_runtime_api.h>
#include <cutlass/numeric_types.h>

#include <string>

#include "kernels/kernels.h"
#include "kernels/sm90/launch.h"

namespace bsk::kernels {
namespace {

[[noreturn]] void missing(const char* what, DType dt, int64_t d) {
  throw NotImplemented(std::string(what) + " for dtype " + dtype_name(dt) + ", head dim " +
                       std::to_string(d) +
                       " is not implemented in this build (instantiation not compiled; a lean "
                       "build has fp16/D=128 only)");
}

#define BSK_CASE(FLAG, DT, ELEM, D, CALL)   \
  if (p_dtype == DType::DT && p_dim == D) { \
    if constexpr (FLAG) {                   \
      CALL<ELEM, D>(params);                \
      return;                               \
    }                                       \
  }

#ifndef BSK_INST_ATTN_FWD_FP16_D64
#define BSK_INST_ATTN_FWD_FP16_D64 0
#endif
#ifndef BSK_INST_ATTN_FWD_FP16_D128
#define BSK_INST_ATTN_FWD_FP16_D128 0
#endif
#ifndef BSK_INST_ATTN_FWD_BF16_D64
#define BSK_INST_ATTN_FWD_BF16_D64 0
#endif
#ifndef BSK_INST_ATTN_FWD_BF16_D128
#define BSK_INST_ATTN_FWD_BF16_D128 0
#endif
#ifndef BSK_INST_SPARSEK_FWD_FP16_D64
#define BSK_INST_SPARSEK_FWD_FP16_D64 0
#endif
#ifndef BSK_INST_SPARSEK_FWD_FP16_D128
#define BSK_INST_SPARSEK_FWD_FP16_D128 0
#endif
#ifndef BSK_INST_SPARSEK_FWD_BF16_D64
#define BSK_INST_SPARSEK_FWD_BF16_D64 0
#endif
#ifndef BSK_INST_SPARSEK_FWD_BF16_D128
#define BSK_INST_SPARSEK_FWD_BF16_D128 0
#endif

}  // namespace

bool available(int device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    cudaGetLastError();
    return false;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return false;
  return prop.major == 9 && prop.minor == 0;
}

std::string instantiations() {
  std::string s = "sm_90a:";
  auto add = [&](bool on, const char* name) {
    if (on) s += std::string(" ") + name;
  };
  add(BSK_INST_ATTN_FWD_FP16_D64, "attn_fwd_fp16_d64");
  add(BSK_INST_ATTN_FWD_FP16_D128, "attn_fwd_fp16_d128");
  add(BSK_INST_ATTN_FWD_BF16_D64, "attn_fwd_bf16_d64");
  add(BSK_INST_ATTN_FWD_BF16_D128, "attn_fwd_bf16_d128");
  add(BSK_INST_SPARSEK_FWD_FP16_D64, "sparsek_fwd_fp16_d64");
  add(BSK_INST_SPARSEK_FWD_FP16_D128, "sparsek_fwd_fp16_d128");
  add(BSK_INST_SPARSEK_FWD_BF16_D64, "sparsek_fwd_bf16_d64");
  add(BSK_INST_SPARSEK_FWD_BF16_D128, "sparsek_fwd_bf16_d128");
  return s + " select";
}

int sparsek_tile_q(int64_t) {
  return 128;
}

void attention_fwd(const AttnFwdParams& params) {
  const DType p_dtype = params.dtype;
  const int64_t p_dim = params.head_dim;
  using sm90::run_dense_fwd;
  BSK_CASE(BSK_INST_ATTN_FWD_FP16_D64, kFloat16, cutlass::half_t, 64, run_dense_fwd)
  BSK_CASE(BSK_INST_ATTN_FWD_FP16_D128, kFloat16, cutlass::half_t, 128, run_dense_fwd)
  BSK_CASE(BSK_INST_ATTN_FWD_BF16_D64, kBFloat16, cutlass::bfloat16_t, 64, run_dense_fwd)
  BSK_CASE(BSK_INST_ATTN_FWD_BF16_D128, kBFloat16, cutlass::bfloat16_t, 128, run_dense_fwd)
  missing("attention_fwd", p_dtype, p_dim);
}

void sparsek_attention_fwd(const SparseKFwdParams& params) {
  const DType p_dtype = params.attn.dtype;
  const int64_t p_dim = params.attn.head_dim;
  using sm90::run_sparsek_fwd;
  BSK_CASE(BSK_INST_SPARSEK_FWD_FP16_D64, kFloat16, cutlass::half_t, 64, run_sparsek_fwd)
  BSK_CASE(BSK_INST_SPARSEK_FWD_FP16_D128, kFloat16, cutlass::half_t, 128, run_sparsek_fwd)
  BSK_CASE(BSK_INST_SPARSEK_FWD_BF16_D64, kBFloat16, cutlass::bfloat16_t, 64, run_sparsek_fwd)
  BSK_CASE(BSK_INST_SPARSEK_FWD_BF16_D128, kBFloat16, cutlass::bfloat16_t, 128, run_sparsek_fwd)
  missing("sparsek_attention_fwd", p_dtype, p_dim);
}

}  // namespace bsk::kernels
