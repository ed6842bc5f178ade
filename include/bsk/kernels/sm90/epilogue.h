// Epilogue: normalises the output accumulator by the softmax sum and writes O (strided, BSHD)
// and LSE (float32 [B, H, Sq], natural log) for the rows of this thread.
#pragma once

#include <cmath>
#include <cstdint>

namespace bsk::sm90 {

template <class Element, int kHeadDim>
struct DirectEpilogue {
  template <class Frag>
  __device__ static void store(Frag& o, const float (&inv)[2], const float (&lse)[2],
                               const bool (&nan_row)[2], Element* out_bh, int64_t row_stride,
                               float* lse_bh, int64_t first_row, int64_t seqlen_q, int lane) {
    int col0 = 2 * (lane % 4);
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      int64_t i = first_row + 8 * b;
      if (i >= seqlen_q) continue;
      Element* row = out_bh + i * row_stride;
#pragma unroll
      for (int v = 0; v < kHeadDim / 8; ++v) {
        float x0 = nan_row[b] ? NAN : o(0 + 2 * b + 4 * v) * inv[b];
        float x1 = nan_row[b] ? NAN : o(1 + 2 * b + 4 * v) * inv[b];
        Element pair[2] = {Element(x0), Element(x1)};
        *reinterpret_cast<uint32_t*>(row + 8 * v + col0) = *reinterpret_cast<uint32_t*>(pair);
      }
      if (lse_bh && lane % 4 == 0) lse_bh[i] = nan_row[b] ? NAN : lse[b];
    }
  }
};

}  // namespace bsk::sm90
