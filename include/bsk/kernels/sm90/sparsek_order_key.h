// The (value, index) order of SPEC section 1 as one unsigned 64-bit integer, and the count of a
// query tile's rows whose threshold theta_p a key reaches. The selection kernel uses them to
// give every key of a tile's union the number of the tile's rows that select it by score.
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

// Number of rows r < kRows (a prefix, by monotonicity) with key_of(r) <= key.
template <int kRows, class KeyOf>
__device__ __forceinline__ int rows_reaching(KeyOf&& key_of, uint64_t key) {
  static_assert((kRows & (kRows - 1)) == 0, "power-of-two row count");
  int n = 0;
#pragma unroll
  for (int step = kRows / 2; step >= 1; step >>= 1)
    if (key_of(n + step - 1) <= key) n += step;
  if (key_of(n) <= key) ++n;  // n = kRows - 1 after the steps when all but the last reach
  return n;
}

}  // namespace bsk::sm90
