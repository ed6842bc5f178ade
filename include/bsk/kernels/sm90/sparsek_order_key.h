// The (value, index) order of SPEC section 1 as one unsigned 64-bit integer, and the order key of
// a query row's threshold theta_p. The selection kernel uses them to give every key of a tile's
// union the number of the tile's rows that select it by score.
#pragma once

#include <cstdint>

namespace bsk::sm90 {

// The float's bits mapped to an unsigned order (negative values reversed), above the index. -0 is
// first turned into +0 (a plain IEEE add keeps subnormals), so the order is that of float
// comparison.
__device__ __forceinline__ uint32_t score_order_bits(float u) {
  float c;
  asm("add.f32 %0, %1, 0f00000000;\n" : "=f"(c) : "f"(u));
  const uint32_t b = __float_as_uint(c);
  return b ^ (uint32_t(int32_t(b) >> 31) | 0x80000000u);
}
__device__ __forceinline__ uint64_t score_order_key(float u, int32_t j) {
  return (uint64_t(score_order_bits(u)) << 32) | uint32_t(j);
}

// Order key of a query row's threshold: 0 where every candidate is selected (tau = -inf), all
// ones for NaN rows and rows past the end (selection undefined or unused). theta_p is
// non-decreasing in p (a longer prefix of candidates can only raise its k-th largest), and with
// these conventions so are the keys (pinned on the CPU by
// RefSparseK.ThresholdOrderNonDecreasingAlongRows).
__device__ __forceinline__ uint64_t row_theta_key(float tau, float theta_val, int32_t theta_idx) {
  if (tau == -INFINITY) return 0;
  if (isnan(tau)) return ~uint64_t(0);
  return score_order_key(theta_val, theta_idx);
}

}  // namespace bsk::sm90
