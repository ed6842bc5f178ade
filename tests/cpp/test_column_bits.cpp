// CPU tests of the mask hooks' column bits (include/bsk/kernels/sm90/column_bits.h) against the
// per-element compares they replace.
#include <gtest/gtest.h>

#include <climits>
#include <cstdint>

#include "bsk/kernels/sm90/column_bits.h"

namespace {

template <int kV>
void check_range(int lo, int hi) {
  const uint32_t upto = bsk::sm90::columns_upto_bits<kV>(hi);
  const uint32_t range = bsk::sm90::column_range_bits<kV>(lo, hi);
  for (int i = 0; i < 32; ++i) {
    const int cc = 8 * (i >> 1) + (i & 1);
    const bool valid = i < 2 * kV;
    ASSERT_EQ((upto >> i) & 1u, (valid && cc <= hi) ? 1u : 0u) << "hi " << hi << " bit " << i;
    ASSERT_EQ((range >> i) & 1u, (valid && cc >= lo && cc <= hi) ? 1u : 0u)
        << "lo " << lo << " hi " << hi << " bit " << i;
  }
}

TEST(ColumnBits, MatchPerElementCompares) {
  for (int lo = -140; lo <= 140; ++lo)
    for (int hi = -140; hi <= 140; ++hi) {
      check_range<16>(lo, hi);
      check_range<8>(lo, hi);
    }
}

TEST(ColumnBits, ExtremeBounds) {
  // Windows up to Sk + 1 and positions up to 2^31 - 1 put the bounds far outside the tile.
  for (int lo : {INT_MIN, INT_MIN + 1, -1000000, 0, 1, 121, 122, 1000000, INT_MAX})
    for (int hi : {INT_MIN, -1000000, -1, 0, 121, 122, 1000000, INT_MAX}) {
      check_range<16>(lo, hi);
      check_range<8>(lo, hi);
    }
}

}  // namespace
