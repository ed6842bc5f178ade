// Online softmax over the KV tiles of a row block, in registers, base 2 with the scale folded
// into one FFMA per element. Each thread owns two rows (b = 0, 1); the four threads of a quad
// share a row, so row reductions are two shuffles.
#pragma once

#include <cmath>

namespace bsk::sm90 {

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

template <int kCols>  // accumulator columns per row (kBlockN)
struct OnlineSoftmax {
  static constexpr int kSumParts = 4;  // independent partial sums per row
  // The running max a row's probabilities are taken against may lag the true max by up to
  // 2^kStaleLog2 (probabilities up to 256, far inside fp16/bf16 and fp32 range): O and the
  // row sum share that reference, so the result is the same, and the O accumulator is rescaled
  // only on tiles where some row of the warp grew past it (rarely after the first tiles).
  static constexpr float kStaleLog2 = 8.f;
  float row_max[2] = {-INFINITY, -INFINITY};  // running max of scale*log2(e)*s
  float row_sum[2] = {0.f, 0.f};              // this thread's partial sum (quad-reduced at end)
  float scale_log2 = 1.f;

  // The rows' new reference maxima m_new (scale * log2(e) units); returns whether the output
  // accumulator must be rescaled (warp-uniform: the caller branches around the rescale).
  template <class Frag>
  __device__ bool new_max(const Frag& s, float (&m_new)[2]) const {
    // Row max as a tree of independent partial results, not one chain through all of the row's
    // elements: with a 32-deep dependent chain per row the consumers stall on each FMNMX's
    // latency (ncu: "wait" and short-scoreboard stalls on them).
    constexpr int kV = kCols / 8;
    bool grow = false;
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      // The max tree halves the w live values each level, the odd one out carried (kV need not
      // be a power of two: 192-key tiles have kV = 24, where halving w by a shift dropped a third
      // of the row).
      float m[kV];
#pragma unroll
      for (int v = 0; v < kV; ++v) m[v] = fmaxf(s(0 + 2 * b + 4 * v), s(1 + 2 * b + 4 * v));
#pragma unroll
      for (int w = kV; w > 1; w = (w + 1) / 2)
#pragma unroll
        for (int v = 0; v < kV / 2; ++v)
          if (v + (w + 1) / 2 < w) m[v] = fmaxf(m[v], m[v + (w + 1) / 2]);
      m_new[b] = fmaxf(row_max[b], quad_max(m[0]) * scale_log2);
      // (-inf + 8 stays -inf: a row's first finite max always moves the reference.)
      grow |= m_new[b] > row_max[b] + kStaleLog2;
    }
    return __any_sync(0xffffffff, grow);
  }

  // Row b's reference moves to m_new[b] when rescaling (correction[b] then takes O and the row
  // sum there); returns the reference the exponentials subtract.
  __device__ float take_max(int b, bool rescale, const float (&m_new)[2], float (&correction)[2]) {
    if (rescale) {
      // A row that has seen no key yet keeps max -inf; exp2(-inf - 0) gives 0, not NaN.
      correction[b] = exp2f(row_max[b] - (m_new[b] == -INFINITY ? 0.f : m_new[b]));
      row_max[b] = m_new[b];
    } else {
      correction[b] = 1.f;
    }
    return row_max[b] == -INFINITY ? 0.f : row_max[b];
  }

  // Row b's partial sums, added as a tree, into its running sum.
  __device__ void add_sum(int b, bool rescale, const float (&correction)[2],
                          float (&part)[kSumParts]) {
#pragma unroll
    for (int w = kSumParts / 2; w >= 1; w >>= 1)
#pragma unroll
      for (int q = 0; q < kSumParts / 2; ++q)
        if (q < w) part[q] += part[q + w];
    row_sum[b] = (rescale ? row_sum[b] * correction[b] : row_sum[b]) + part[0];
  }

  // Turns s into unnormalised probabilities exp2(s*scale_log2 - max) in place. Returns whether
  // the output accumulator must be rescaled by correction[b] for each row (warp-uniform: the
  // caller branches around the rescale); when false the reference maxima did not move and
  // correction is 1.
  template <class Frag>
  __device__ bool step(Frag& s, float (&correction)[2]) {
    constexpr int kV = kCols / 8;
    float m_new[2];
    const bool rescale = new_max(s, m_new);
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const float m_use = take_max(b, rescale, m_new, correction);
      float part[kSumParts];
#pragma unroll
      for (int q = 0; q < kSumParts; ++q) part[q] = 0.f;
#pragma unroll
      for (int v = 0; v < kV; ++v)
#pragma unroll
        for (int a = 0; a < 2; ++a) {
          float p = exp2f(fmaf(s(a + 2 * b + 4 * v), scale_log2, -m_use));
          s(a + 2 * b + 4 * v) = p;
          part[v % kSumParts] += p;
        }
      add_sum(b, rescale, correction, part);
    }
    return rescale;
  }

  // Final normaliser 1/l and natural-log LSE per row; rows with no key: 0 and -inf.
  __device__ void finish(float (&inv)[2], float (&lse)[2]) {
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      float l = quad_sum(row_sum[b]);
      bool empty = !(l > 0.f);
      inv[b] = empty ? 0.f : 1.f / l;
      lse[b] = empty ? -INFINITY : (row_max[b] + __log2f(l)) * 0.69314718055994531f;
      if (isnan(l)) inv[b] = lse[b] = NAN;
    }
  }
};

}  // namespace bsk::sm90
