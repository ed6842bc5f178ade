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

#include "bsk/kernels/sm90/column_bits.h"
#include "bsk/kernels/sm90/kv_iterator.h"
#include "kernels/kernels.h"

namespace bsk::sm90 {

// Shared-memory loads the compiler may not merge across the softmax: the mask and the gate
// passes each re-read the tile's key metadata instead of keeping 64 values live in registers.
// A thread's columns come in adjacent pairs (8 v + col0 + {0, 1}, col0 even), so one 8-byte
// load fetches both.
__device__ __forceinline__ float2 lds_f32x2(const float* p) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n"
               : "=f"(v.x), "=f"(v.y)
               : "r"(cute::cast_smem_ptr_to_uint(p)));
  return v;
}
__device__ __forceinline__ int2 lds_s32x2(const int32_t* p) {
  int2 v;
  asm volatile("ld.shared.v2.s32 {%0, %1}, [%2];\n"
               : "=r"(v.x), "=r"(v.y)
               : "r"(cute::cast_smem_ptr_to_uint(p)));
  return v;
}

__device__ __forceinline__ int2 lds_pair(const int32_t* p) {
  return lds_s32x2(p);
}
__device__ __forceinline__ float2 lds_pair(const float* p) {
  return lds_f32x2(p);
}
// Calls f(v, pair) for v < kBlockN / 8, pair = the slot's values of the thread's columns
// 8 v + col0 + {0, 1} (an int2 or float2): the mask's and the gate's reads of a slot.
template <int kBlockN, class T, class F>
__device__ __forceinline__ void for_slot_columns(const T* slot, int col0, F&& f) {
#pragma unroll
  for (int v = 0; v < kBlockN / 8; ++v) f(v, lds_pair(slot + 8 * v + col0));
}

// clip(a - b, 0, 1) in one instruction (NaN -> 0).
__device__ __forceinline__ float sub_sat(float a, float b) {
  float d;
  asm("sub.sat.f32 %0, %1, %2;\n" : "=f"(d) : "f"(a), "f"(b));
  return d;
}
// Keeps the columns [lo[b], hi[b]] (offsets from the thread's first column col0) of row b and
// sets the rest to -inf; kLower = false: no lower bound. Both hooks' column-range masks use it.
template <int kBlockN, bool kLower, class Frag>
__device__ __forceinline__ void keep_columns(Frag& s, const int (&lo)[2], const int (&hi)[2]) {
  // One bit mask per row (column_bits.h) and one bit test per element, which ptxas makes R2P +
  // FSEL: ~112 instructions per tile instead of 192 for two compares and a select per element
  // (SparseK attention kernel at the seed shape on an H200 -0.4%). The compares remain for
  // tiles of more than 128 columns (32 bits of mask).
  if constexpr (kBlockN / 8 <= 16) {
    constexpr int kV = kBlockN / 8;
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const uint32_t bits =
          kLower ? column_range_bits<kV>(lo[b], hi[b]) : columns_upto_bits<kV>(hi[b]);
#pragma unroll
      for (int v = 0; v < kV; ++v)
#pragma unroll
        for (int a = 0; a < 2; ++a) {
          const int e = a + 2 * b + 4 * v;
          s(e) = ((bits >> (2 * v + a)) & 1u) ? s(e) : -INFINITY;
        }
    }
  } else {
#pragma unroll
    for (int v = 0; v < kBlockN / 8; ++v)
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const int e = a + 2 * b + 4 * v, cc = 8 * v + a;
          const bool keep = kLower ? (cc >= lo[b]) & (cc <= hi[b]) : cc <= hi[b];
          s(e) = keep ? s(e) : -INFINITY;
        }
  }
}

// Both hooks are branch-free per element: per row and tile the admissible column range (or the
// selection threshold) is computed once, and each element costs a bit test or a compare or two and
// a select.
// (Per-element early-outs made the compiler emit a divergent branch and reconvergence point for
// every element, ~45 instructions per column of a gathered tile.)

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

  template <class Frag>
  __device__ void mask(Frag& s, const KvTile& t, int, int col0) const {
    bool need = t.count < kBlockN || (causal && t.start + kBlockN - 1 > min_pos);
    if (!need) return;
    int hi[2];  // last admissible column of the row, minus col0
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      int64_t h = int64_t(t.count) - 1;
      if (causal && pos[b] - t.start < h) h = pos[b] - t.start;
      hi[b] = int(h < -1 ? -1 : h) - col0;
    }
    keep_columns<kBlockN, false>(s, hi, hi);
  }
  template <class Frag>
  __device__ void gate(Frag&, const KvTile&, int, int) const {}
  __device__ bool row_is_nan(int) const {
    return false;
  }
};

// SparseK membership. Key j is selected for one contiguous range of query positions (theta_p is
// non-decreasing in p), so within a CTA (a query tile) the rows that select a key of the tile's
// union are those among rows 0 .. n_j - 1 where j is a candidate: the selection kernel stores n_j
// with every union key, and "j in Sel_p" is "row < n_j" for a candidate j. The gathered tiles
// hold only keys that are candidates of every row; the newer union keys are in the mixed tile,
// where a column is a candidate of the row exactly when it lies below the row's window.

template <int kBlockN, class SharedStorage>
struct SparseKMaskHook {
  static constexpr bool kHasGate = true;
  // 32-bit positions: the API guarantees Sk < 2^31, and 64-bit compares double the mask's cost.
  int32_t window = 0;
  int32_t pos[2] = {0, 0};
  int32_t row[2] = {0, 0};                 // the rows' index in the CTA
  int32_t win_all_lo = 0, win_all_hi = 0;  // keys in the window of every row of the CTA
  float tau[2];
  const SharedStorage* smem;

  // Query row i's entry of tau ([B, Hkv, Sq]; rows past the end take the last row's).
  __device__ static int64_t tau_index(const kernels::SparseKFwdParams& p, int64_t i, int batch,
                                      int head_kv) {
    const auto& a = p.attn;
    return (int64_t(batch) * a.num_heads_kv + head_kv) * a.seqlen_q +
           (i < a.seqlen_q ? i : a.seqlen_q - 1);
  }

  // tile_tau: the CTA's rows' tau in shared memory (the work tile's header), or nullptr to
  // load them from p.tau.
  __device__ SparseKMaskHook(const kernels::SparseKFwdParams& p, int m_block, int row_in_cta0,
                             int kBlockM, int batch, int head_kv, const SharedStorage* sm,
                             const float* tile_tau = nullptr)
      : smem(sm) {
    const auto& a = p.attn;
    window = int32_t(p.window < a.seqlen_k ? p.window : a.seqlen_k + 1);
    int64_t offset = a.seqlen_k - a.seqlen_q;
    int64_t first = int64_t(m_block) * kBlockM;
    int64_t last = first + kBlockM - 1 < a.seqlen_q - 1 ? first + kBlockM - 1 : a.seqlen_q - 1;
    win_all_lo = int32_t(offset + last) - window + 1;
    win_all_hi = int32_t(offset + first);
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      row[b] = row_in_cta0 + 8 * b;
      int64_t i = first + row[b];
      pos[b] = int32_t(offset + i);
      tau[b] = tile_tau ? tile_tau[row[b]] : p.tau[tau_index(p, i, batch, head_kv)];
    }
  }

  // The tiles with key metadata: row p keeps column c if the row selects the key (row < n_c;
  // n_c = 0 for keys no row selects and past the tile's end) and, in a mixed tile (kWindow),
  // the column lies below the row's window [lo, hi] (a candidate), or inside it. Gathered keys
  // are candidates of every row (older than every row's window: the selection's union_old).
  template <bool kWindow, class Frag>
  __device__ void metadata_mask(Frag& s, int slot, int col0, const int (&lo)[2],
                                const int (&hi)[2]) const {
    auto columns = [&](int v, const int2& nn) {
#pragma unroll
      for (int a = 0; a < 2; ++a) {
        const int32_t n = a ? nn.y : nn.x;
        const int cc = 8 * v + a;
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const int e = a + 2 * b + 4 * v;
          const bool keep = kWindow ? (cc <= hi[b]) & ((cc >= lo[b]) | (row[b] < n)) : row[b] < n;
          s(e) = keep ? s(e) : -INFINITY;
        }
      }
    };
    for_slot_columns<kBlockN>(smem->key_rows[slot], col0, columns);
  }

  template <class Frag>
  __device__ void mask(Frag& s, const KvTile& t, int slot, int col0) const {
    int lo[2] = {0, 0}, hi[2] = {0, 0};
    if (t.gathered) {
      metadata_mask<false>(s, slot, col0, lo, hi);
    } else if (t.mixed) {
      window_columns(t, col0, lo, hi);
      metadata_mask<true>(s, slot, col0, lo, hi);
    } else {
      // Window keys: row p sees [p - window + 1, p]; a tile inside every row's window of the
      // CTA (the middle of the band) needs no mask.
      const int32_t start = int32_t(t.start);
      if (t.count == kBlockN && start >= win_all_lo && start + kBlockN - 1 <= win_all_hi) return;
      window_columns(t, col0, lo, hi);
      keep_columns<kBlockN, true>(s, lo, hi);
    }
  }

  // A contiguous tile's window columns [lo, hi] of this thread's rows, minus col0 (with
  // window = 0, lo = hi + 1: empty).
  __device__ void window_columns(const KvTile& t, int col0, int (&lo)[2], int (&hi)[2]) const {
    const int32_t start = int32_t(t.start);
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      lo[b] = pos[b] - window + 1 - start - col0;
      const int h = pos[b] - start < t.count - 1 ? pos[b] - start : t.count - 1;
      hi[b] = h - col0;
    }
  }

  // p *= clip(u_j - tau, 0, 1) in one instruction per element; in a mixed tile (kWindow) gate 1
  // from the row's window on. Where every candidate is selected, tau = -inf gives 1; the
  // selection stores non-finite scores as 0, which only such rows (and NaN rows, whose output
  // is NaN anyway) can select. Masked keys have p = 0.
  template <bool kWindow, class Frag>
  __device__ void metadata_gate(Frag& p, int slot, int col0, const int (&lo)[2]) const {
    auto columns = [&](int v, const float2& uu) {
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const float m = sub_sat((a ? uu.y : uu.x), tau[b]);
          p(a + 2 * b + 4 * v) *= kWindow && 8 * v + a >= lo[b] ? 1.f : m;
        }
    };
    for_slot_columns<kBlockN>(smem->key_u[slot], col0, columns);
  }

  template <class Frag>
  __device__ void gate(Frag& p, const KvTile& t, int slot, int col0) const {
    int lo[2] = {0, 0}, hi[2] = {0, 0};
    if (t.gathered) {
      metadata_gate<false>(p, slot, col0, lo);
    } else if (t.mixed) {
      window_columns(t, col0, lo, hi);
      metadata_gate<true>(p, slot, col0, lo);
    }  // window keys have gate 1
  }
  __device__ bool row_is_nan(int b) const {
    return isnan(tau[b]);
  }
};

}  // namespace bsk::sm90
