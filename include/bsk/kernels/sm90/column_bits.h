// A thread's accumulator columns as bits, for the column-range masks of the mask hooks
// (mask_hook.h). In the SM90 WGMMA layout a thread's elements of one row sit at columns
// cc(i) = 8 (i >> 1) + (i & 1) for i < 2 kV (kV = kBlockN / 8) from its first column; cc is
// increasing in i, so a column range [lo, hi] is a contiguous run of bits. One mask per row and
// one bit test per element lets the compiler move 7 bits at a time into predicates (R2P) instead
// of comparing every element against both bounds.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define BSK_COLBITS_HD __host__ __device__ __forceinline__
#else
#define BSK_COLBITS_HD inline
#endif

namespace bsk::sm90 {

// #{i < 2 kV : cc(i) <= x}: #{v < kV : 8 v <= x} + #{v < kV : 8 v + 1 <= x}. Clamping x to
// [-7, 8 kV - 7] (every column above / at most the last one, 8 kV - 7) keeps both counts in
// [0, kV] without further tests and rules out overflow.
template <int kV>
BSK_COLBITS_HD int columns_upto(int x) {
  x = x < -7 ? -7 : (x > 8 * kV - 7 ? 8 * kV - 7 : x);
  return ((x + 8) >> 3) + ((x + 7) >> 3);
}
// #{i < 2 kV : cc(i) < x}, i.e. columns_upto(x - 1) without forming x - 1.
template <int kV>
BSK_COLBITS_HD int columns_below(int x) {
  x = x < -6 ? -6 : (x > 8 * kV - 6 ? 8 * kV - 6 : x);
  return ((x + 7) >> 3) + ((x + 6) >> 3);
}

// The c lowest bits (0 <= c <= 32): one clamped funnel shift on the device.
BSK_COLBITS_HD uint32_t low_bits(int c) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_lc(~0u, 0u, static_cast<unsigned>(c));
#else
  return c >= 32 ? ~0u : (1u << c) - 1u;
#endif
}

// Bit i set iff cc(i) <= hi.
template <int kV>
BSK_COLBITS_HD uint32_t columns_upto_bits(int hi) {
  static_assert(kV <= 16, "a thread's columns of a row must fit 32 bits");
  return low_bits(columns_upto<kV>(hi));
}

// Bit i set iff lo <= cc(i) <= hi.
template <int kV>
BSK_COLBITS_HD uint32_t column_range_bits(int lo, int hi) {
  return columns_upto_bits<kV>(hi) & ~low_bits(columns_below<kV>(lo));
}

}  // namespace bsk::sm90
