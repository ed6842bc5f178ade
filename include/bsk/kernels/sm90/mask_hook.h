// Mask and gate hooks applied by the consumers to the S = Q K^T accumulator of one KV tile.
// Accumulator element e = a + 2 b + 4 v of a thread holds row (warp*16 + lane/4 + 8 b) and
// column (8 v + 2 (lane%4) + a) of its warpgroup's 64 x kBlockN tile (SM90 WGMMA layout).
//  - mask(): sets S to -inf where the key is not attended by the row.
//  - gate(): multiplies P (after exp, before the PV GEMM) by the per-(row, key) gate; the
//    softmax normaliser uses the ungated P (value gating, SPEC section 1).
#pragma once

#include <cmath>
#include <cstdint>
#include <cute/arch/util.hpp>

#include "bsk/kernels/sm90/kv_iterator.h"
#include "kernels/kernels.h"

namespace bsk::sm90 {

// Shared-memory loads the compiler may not merge across the softmax: the mask and the gate
// passes each re-read the tile's key metadata instead of keeping 64 values live in registers.
__device__ __forceinline__ float lds_f32(const float* p) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(cute::cast_smem_ptr_to_uint(p)));
  return v;
}
__device__ __forceinline__ int32_t lds_s32(const int32_t* p) {
  int32_t v;
  asm volatile("ld.shared.s32 %0, [%1];\n" : "=r"(v) : "r"(cute::cast_smem_ptr_to_uint(p)));
  return v;
}

template <int kBlockN>
struct DenseMaskHook {
  static constexpr bool kHasGate = false;
  bool causal = false;
  int64_t pos[2] = {0, 0};  // absolute positions of this thread's two rows
  int64_t min_pos = 0;      // smallest position in the CTA (uniform)

  __device__ DenseMaskHook(const kernels::AttnFwdParams& p, int m_block, int row_in_cta0,
                           int kBlockM) {
    causal = p.causal;
    int64_t offset = p.seqlen_k - p.seqlen_q;
    pos[0] = offset + int64_t(m_block) * kBlockM + row_in_cta0;
    pos[1] = pos[0] + 8;
    min_pos = offset + int64_t(m_block) * kBlockM;
  }
  __device__ void begin_row_block() {}

  template <class Frag>
  __device__ void mask(Frag& s, const KvTile& t, int stage, int col0) const {
    bool need = t.count < kBlockN || (causal && t.start + kBlockN - 1 > min_pos);
    if (!need) return;
#pragma unroll
    for (int v = 0; v < kBlockN / 8; ++v)
#pragma unroll
      for (int a = 0; a < 2; ++a) {
        int c = 8 * v + col0 + a;
        int64_t j = t.start + c;
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          bool ok = c < t.count && (!causal || j <= pos[b]);
          if (!ok) s(a + 2 * b + 4 * v) = -INFINITY;
        }
      }
  }
  template <class Frag>
  __device__ void gate(Frag&, const KvTile&, int, int) const {}
  __device__ bool row_is_nan(int) const {
    return false;
  }
};

template <int kBlockN, class SharedStorage>
struct SparseKMaskHook {
  static constexpr bool kHasGate = true;
  // 32-bit positions: the API guarantees Sk < 2^31, and 64-bit compares double the mask's cost.
  int32_t window = 0;
  int32_t pos[2] = {0, 0};
  int32_t cand_end[2] = {0, 0};  // last candidate index c_p (keys older than the window)
  float tau[2], theta_val[2];
  int32_t theta_idx[2];
  bool all_sel[2];
  const SharedStorage* smem;

  __device__ SparseKMaskHook(const kernels::SparseKFwdParams& p, int m_block, int row_in_cta0,
                             int kBlockM, int batch, int head_kv, const SharedStorage* sm)
      : smem(sm) {
    const auto& a = p.attn;
    window = int32_t(p.window < a.seqlen_k ? p.window : a.seqlen_k + 1);
    int64_t offset = a.seqlen_k - a.seqlen_q;
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      int64_t i = int64_t(m_block) * kBlockM + row_in_cta0 + 8 * b;
      int64_t ic = i < a.seqlen_q ? i : a.seqlen_q - 1;
      pos[b] = int32_t(offset + i);
      cand_end[b] = window > 0 ? pos[b] - window : pos[b];
      int64_t q = (int64_t(batch) * a.num_heads_kv + head_kv) * a.seqlen_q + ic;
      tau[b] = p.tau[q];
      theta_val[b] = p.theta_val[q];
      theta_idx[b] = p.theta_idx[q];
      all_sel[b] = tau[b] == -INFINITY;  // n_p <= k_select: every candidate, gate 1
    }
  }

  __device__ bool selected(int b, int32_t j, float u) const {
    if (j > cand_end[b]) return false;
    if (all_sel[b]) return true;
    return u > theta_val[b] || (u == theta_val[b] && j >= theta_idx[b]);
  }

  template <class Frag>
  __device__ void mask(Frag& s, const KvTile& t, int stage, int col0) const {
#pragma unroll
    for (int v = 0; v < kBlockN / 8; ++v)
#pragma unroll
      for (int a = 0; a < 2; ++a) {
        int c = 8 * v + col0 + a;
        if (t.gathered) {
          int32_t j = lds_s32(&smem->key_idx[stage][c]);
          float u = lds_f32(&smem->key_u[stage][c]);
#pragma unroll
          for (int b = 0; b < 2; ++b)
            if (!(c < t.count && selected(b, j, u))) s(a + 2 * b + 4 * v) = -INFINITY;
        } else {
          int32_t j = int32_t(t.start) + c;
#pragma unroll
          for (int b = 0; b < 2; ++b) {
            bool ok = c < t.count && j <= pos[b] && j > pos[b] - window;
            if (!ok) s(a + 2 * b + 4 * v) = -INFINITY;
          }
        }
      }
  }

  template <class Frag>
  __device__ void gate(Frag& p, const KvTile& t, int stage, int col0) const {
    if (!t.gathered) return;  // window keys have gate 1
#pragma unroll
    for (int v = 0; v < kBlockN / 8; ++v)
#pragma unroll
      for (int a = 0; a < 2; ++a) {
        int c = 8 * v + col0 + a;
        float u = lds_f32(&smem->key_u[stage][c]);
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          float g = all_sel[b] ? 1.f : fminf(fmaxf(u - tau[b], 0.f), 1.f);
          p(a + 2 * b + 4 * v) *= g;
        }
      }
  }
  __device__ bool row_is_nan(int b) const {
    return isnan(tau[b]);
  }
};

}  // namespace bsk::sm90
