// Public C++ API of BlackwellSparseK. Framework-free: tensors are TensorViews (pointer, sizes,
// int64 strides in elements, device), the CUDA stream is an opaque pointer (cudaStream_t).
//
// Layout "BSHD": q [B, Sq, H, D], k/v [B, Sk, Hkv, D], out like q, lse [B, H, Sq] float32
// contiguous, scores [B, Sk, Hkv] float32. Arbitrary strides, last dimension contiguous.
// Queries are end-aligned: query row i sits at absolute position p = Sk - Sq + i.
//
// Every function validates all arguments before touching memory and throws
// bsk::InvalidArgument / bsk::DTypeError naming the argument; nothing is written on error.
// CPU tensors run the exact CPU reference (double accumulation); CUDA tensors run the sm_90a
// kernels, or throw bsk::NotImplemented when this build lacks them.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "bsk/types.h"

namespace bsk {

inline constexpr float kDefaultScale = NAN;  // NaN selects 1/sqrt(D)

struct AttentionFwdArgs {
  TensorView q, k, v;  // inputs
  TensorView out;      // output, same shape/dtype as q
  TensorView lse;      // optional output [B, H, Sq] float32 (natural log)
  bool causal = false;
  float scale = kDefaultScale;
  void* stream = nullptr;
};

struct AttentionBwdArgs {
  TensorView q, k, v, out, dout;
  TensorView lse;   // [B, H, Sq] float32, from the forward
  TensorView dlse;  // optional incoming gradient of lse
  TensorView dq, dk, dv;
  bool causal = false;
  float scale = kDefaultScale;
  void* stream = nullptr;
};

// Per-query selection summary, each [B, Hkv, Sq] contiguous.
//  tau       float32: the SparseK threshold; -inf when n_p <= k_select (all candidates selected);
//            NaN when n_p > k_select and a candidate score is not finite.
//  theta_val float32, theta_idx int32: the (value, index) of the k-th selected key; membership
//            j in Sel_p  <=>  j <= p - window (j <= p when window == 0) and (u_j, j) >= theta.
//            (-inf, -1) when all candidates are selected.
//  n_active  int32: |A_p| = #{ j in C_p : tau < u_j < tau + 1 } (0 when n_p <= k_select).
struct SparseKSelectArgs {
  TensorView scores;  // [B, Sk, Hkv] float32
  int64_t seqlen_q = 0;
  int64_t k_select = 0;
  int64_t window = 0;
  TensorView tau, theta_val, theta_idx, n_active;
  // Optional device scratch of at least sparsek_select_workspace_size() bytes (non-zero from
  // 2049 keys: the selection's chunk table, and beyond 16384 keys the global-memory sort), at any
  // address (the size includes the slack to align it). When null and needed, the call allocates
  // it stream-ordered (cudaMallocAsync) and frees it after the launches.
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  void* stream = nullptr;
};

struct SparseKFwdArgs {
  TensorView q, k, v, scores, out;
  TensorView lse;  // optional
  int64_t k_select = 0;
  int64_t window = 0;
  float scale = kDefaultScale;
  // Optional device scratch of at least sparsek_attention_fwd_workspace_size() bytes. When null,
  // the call allocates it stream-ordered (cudaMallocAsync) and frees it after the launches.
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  void* stream = nullptr;
};

struct SparseKBwdArgs {
  TensorView q, k, v, scores, out, dout, lse;
  TensorView dlse;  // optional
  TensorView dq, dk, dv, dscores;
  int64_t k_select = 0;
  int64_t window = 0;
  float scale = kDefaultScale;
  void* stream = nullptr;
};

void attention_fwd(const AttentionFwdArgs& args);
void attention_bwd(const AttentionBwdArgs& args);
std::size_t sparsek_select_workspace_size(const SparseKSelectArgs& args);  // outputs not needed
void sparsek_select(const SparseKSelectArgs& args);
std::size_t sparsek_attention_fwd_workspace_size(const SparseKFwdArgs& args);
void sparsek_attention_fwd(const SparseKFwdArgs& args);
void sparsek_attention_bwd(const SparseKBwdArgs& args);

// True when this build has sm_90a kernels and `device` is an sm_90 GPU.
bool cuda_kernels_available(int device);
// Human-readable description of the build: CUDA version, compiled kernel instantiations.
std::string build_info();

}  // namespace bsk
