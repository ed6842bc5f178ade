// Epilogue: normalises the output accumulator by the softmax sum and writes O (strided, BSHD)
// and LSE (float32 [B, H, Sq], natural log). The warpgroup's 64 rows go through shared memory
// (padded rows: the accumulator's 4-byte pairs land conflict-free) and leave as whole 16-byte
// chunks, a warp writing two full rows (D = 128) per instruction, so O's rows must be 16-byte
// aligned (the API requires it of every tensor; the launcher checks it). Measured faster than
// per-thread 4-byte stores for both kernels (docs/kernel_notes.md, v14-v15).
#pragma once

#include <cmath>
#include <cstdint>
#include <cute/arch/util.hpp>

namespace bsk::sm90 {

// Columns 8 v + col0 + {0, 1} of the thread's row b (accumulator elements a + 2 b + 4 v),
// normalised by 1 / l (NaN rows: NaN) and packed as two Elements.
template <class Element, class Frag>
__device__ __forceinline__ uint32_t normalized_pair(Frag& o, int b, int v, float inv, bool nan) {
  const float x0 = nan ? NAN : o(0 + 2 * b + 4 * v) * inv;
  const float x1 = nan ? NAN : o(1 + 2 * b + 4 * v) * inv;
  Element pair[2] = {Element(x0), Element(x1)};
  return *reinterpret_cast<uint32_t*>(pair);
}

template <class Element, int kHeadDim>
struct StagedEpilogue {
  static constexpr int kStageCols = kHeadDim + 8;  // +16 bytes: row r starts 4 r banks later
  static constexpr int kChunks = kHeadDim * int(sizeof(Element)) / 16;  // per row
  // Named barrier of consumer warpgroup cw (0 and 1 are taken by __syncthreads and the producer).
  __device__ static void wg_sync(int cw) {
    asm volatile("bar.sync %0, 128;\n" ::"r"(2 + cw) : "memory");
  }
  // stage: the warpgroup's 64 x kStageCols rows; wg_first_row: the query row of its row 0;
  // row_in_wg0: this thread's first row within the warpgroup (warp * 16 + lane / 4); clock: the
  // phase profile's (phase_clock.h; laps 15-17, nothing without BSK_ATTN_PROFILE).
  template <class Frag, class Clock>
  __device__ static void store(Frag& o, const float (&inv)[2], const float (&lse)[2],
                               const bool (&nan_row)[2], Element* stage, Element* out_bh,
                               int64_t row_stride, float* lse_bh, int64_t wg_first_row,
                               int row_in_wg0, int64_t seqlen_q, int ctid, int cw, Clock& clock) {
    const int lane = ctid % 32, col0 = 2 * (lane % 4);
    wg_sync(cw);  // every warp is done with the stage's previous contents (the tile's Q block)
    clock.lap(15);
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      Element* row = stage + (row_in_wg0 + 8 * b) * kStageCols;
#pragma unroll
      for (int v = 0; v < kHeadDim / 8; ++v)
        *reinterpret_cast<uint32_t*>(row + 8 * v + col0) =
            normalized_pair<Element>(o, b, v, inv[b], nan_row[b]);
      const int64_t i = wg_first_row + row_in_wg0 + 8 * b;
      if (lse_bh && lane % 4 == 0 && i < seqlen_q) lse_bh[i] = nan_row[b] ? NAN : lse[b];
    }
    wg_sync(cw);
    clock.lap(16);
    // Thread t copies chunk t % kChunks of rows t / kChunks + kRowsPerPass * k: one shared and
    // one global address, each advanced by a constant per k. All chunks are loaded before the
    // first store, so no load waits for a store to release its registers.
    constexpr int kElems = 16 / int(sizeof(Element));
    constexpr int kRowsPerPass = 128 / kChunks;
    constexpr int kPerThread = 64 / kRowsPerPass;
    static_assert(128 % kChunks == 0 && 64 % kRowsPerPass == 0, "whole passes of the warpgroup");
    const int r0 = ctid / kChunks, q = ctid % kChunks;
    const uint32_t s0 = cute::cast_smem_ptr_to_uint(stage + r0 * kStageCols + q * kElems);
    constexpr uint32_t kStageStep = kRowsPerPass * kStageCols * uint32_t(sizeof(Element));
    uint4 x[kPerThread];
#pragma unroll
    for (int k = 0; k < kPerThread; ++k)
      asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(x[k].x), "=r"(x[k].y), "=r"(x[k].z), "=r"(x[k].w)
                   : "r"(s0 + k * kStageStep));
    const int64_t row = wg_first_row + r0;
    char* g = reinterpret_cast<char*>(out_bh + row * row_stride + q * kElems);
    const int64_t g_step = int64_t(kRowsPerPass) * row_stride * int64_t(sizeof(Element));
#pragma unroll
    for (int k = 0; k < kPerThread; ++k)
      if (row + k * kRowsPerPass < seqlen_q) *reinterpret_cast<uint4*>(g + k * g_step) = x[k];
    clock.lap(17);
  }
};

}  // namespace bsk::sm90
