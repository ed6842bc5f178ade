// Internal interface between the validated C++ API (src/api) and the sm_90a kernels. Params are
// plain structs: device pointers, int64 strides in elements, sizes, stream. The API validates
// everything before any of these is called; kernels may assume valid input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "bsk/types.h"

namespace bsk::kernels {

// Dense attention forward. q [B,Sq,H,D], k/v [B,Sk,Hkv,D], o [B,Sq,H,D]: strides per dim (the
// last dim is contiguous). lse [B,H,Sq] contiguous float32, nullable.
struct AttnFwdParams {
  DType dtype = DType::kFloat16;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, num_heads = 0, num_heads_kv = 0, head_dim = 0;
  int64_t q_stride[3] = {0, 0, 0};  // batch, seq, head
  int64_t k_stride[3] = {0, 0, 0};
  int64_t v_stride[3] = {0, 0, 0};
  int64_t o_stride[3] = {0, 0, 0};
  bool causal = false;
  float scale = 0.f;
  void* stream = nullptr;  // cudaStream_t
};

// SparseK selection. scores [B,Sk,Hkv] float32 with strides. Per-query outputs [B,Hkv,Sq]
// contiguous. Optionally (union_idx != nullptr) the per-query-tile union of the selections:
// tile t covers query rows [t*tile_q, min(Sq, (t+1)*tile_q)); union_idx [B,Hkv,n_tiles,union_cap]
// int32 holds, sorted ascending, every key j that is in Sel_p for at least one p of the tile
// (window keys are not included: the attention kernel visits the window range separately);
// union_cnt [B,Hkv,n_tiles] int32 its length (<= min(k_select + tile_q, Sk)). With union_rows
// and union_u (same shape as union_idx; tile_q must be 128), per union key j: n_j such that a row
// r of the tile for which j is a candidate selects j iff r < n_j, and u_j (0 where not finite).
// With union_old ([B,Hkv,n_tiles] int32, optional): how many leading union keys are candidates of
// the tile's first row, i.e. j < L0 = max(0, p0 - window + 1) (p0 + 1 when window = 0), where p0
// is that row's position. Only the keys selected by that row can be among them (a key that
// leaves a selection never returns), so there are at most k_select; the rest lie in
// [L0, L0 + tile_q - 1), the first window tile's keys.
struct SelectParams {
  const float* scores = nullptr;
  int64_t batch = 0, seqlen_k = 0, num_heads_kv = 0, seqlen_q = 0;
  int64_t score_stride[3] = {0, 0, 0};  // batch, seq, head
  int64_t k_select = 0, window = 0;
  float* tau = nullptr;
  float* theta_val = nullptr;
  int32_t* theta_idx = nullptr;
  int32_t* n_active = nullptr;
  int32_t* union_idx = nullptr;
  int32_t* union_rows = nullptr;
  float* union_u = nullptr;
  int32_t* union_cnt = nullptr;
  int32_t* union_old = nullptr;
  int tile_q = 128;
  int64_t union_cap = 0;
  void* workspace = nullptr;  // >= select_workspace_bytes(params), device memory
  void* stream = nullptr;
};

// SparseK attention forward given the selection above.
struct SparseKFwdParams {
  AttnFwdParams attn;  // causal is implied; seqlen_q <= seqlen_k
  int64_t k_select = 0, window = 0;
  const float* tau = nullptr;  // [B,Hkv,Sq] (the gate; the selection's rows come with the union)
  const int32_t* union_idx = nullptr;   // [B,Hkv,n_tiles,union_cap]
  const int32_t* union_rows = nullptr;  // [B,Hkv,n_tiles,union_cap] (SelectParams)
  const float* union_u = nullptr;       // [B,Hkv,n_tiles,union_cap]
  const int32_t* union_cnt = nullptr;   // [B,Hkv,n_tiles]
  const int32_t* union_old = nullptr;   // [B,Hkv,n_tiles] (SelectParams)
  int tile_q = 128;
  int64_t union_cap = 0;
};

bool available(int device);
std::string instantiations();

// Each throws bsk::NotImplemented when the needed instantiation is not in this build.
void attention_fwd(const AttnFwdParams& p);
std::size_t select_workspace_bytes(const SelectParams& p);
void sparsek_select(const SelectParams& p);
void sparsek_attention_fwd(const SparseKFwdParams& p);
// The query-tile size the SparseK attention kernel for this head dim uses (and so the union).
int sparsek_tile_q(int64_t head_dim);

}  // namespace bsk::kernels
