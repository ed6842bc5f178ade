// The producer warpgroup's cp.async path: loads Q once and every K/V tile of the KV iterator
// into the stage ring (16-byte chunks written straight into the swizzled layout WGMMA reads), so
// contiguous and gathered rows share one path. Completion is signalled on mbarriers with
// cp.async.mbarrier.arrive.noinc: each of the 128 producer threads arrives once per barrier
// phase, after its own copies land. Q and whole contiguous tiles (dense, and SparseK's window)
// go through TMA instead (tma_load.h), on the same barriers; gathered and partial tiles always
// come here.
#pragma once

#include <cutlass/arch/barrier.h>

#include <climits>
#include <cute/tensor.hpp>

#include "bsk/kernels/sm90/kv_iterator.h"

namespace bsk::sm90 {

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  uint32_t s = cute::cast_smem_ptr_to_uint(smem);
  int n = valid ? 16 : 0;  // src-size 0 zero-fills the destination
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}

template <class Traits>
struct CpAsyncProducer {
  using Element = typename Traits::Element;
  static constexpr int kChunks = Traits::kChunksPerRow;

  // K/V tiles: 8 threads per row, so one warp instruction copies four whole 128-byte lines
  // (coalesced); a thread copies chunks c, c + 8, ... of its row. 16 rows per pass of the
  // 128 producer threads, so each thread holds kBlockN / 16 key indices (8 at kBlockN = 128,
  // instead of 16 with one chunk per thread: the producer runs on few registers).
  static constexpr int kThreadsPerRow = 8;
  static constexpr int kChunksPerThread = kChunks / kThreadsPerRow;
  static constexpr int kKeyRowsPerPass = 128 / kThreadsPerRow;
  static constexpr int kKeysPerThread = Traits::kBlockN / kKeyRowsPerPass;
  static_assert(kChunks % kThreadsPerRow == 0, "a row is a whole number of 8-chunk groups");

  // Gathered tiles: the key index of each row this thread copies (-1: past the tile's end),
  // from the tile's metadata slot in shared memory (INT32_MAX past the end); K and V share them.
  __device__ static void slot_keys(const int32_t* slot_idx, int tid,
                                   int32_t (&keys)[kKeysPerThread]) {
    const int r0 = tid / kThreadsPerRow;
#pragma unroll
    for (int it = 0; it < kKeysPerThread; ++it) {
      const int32_t j = slot_idx[r0 + it * kKeyRowsPerPass];
      keys[it] = j == INT32_MAX ? -1 : j;
    }
  }

  // Copies the tile's rows base[keys * row_stride] into dst (zero-fill past the end).
  template <class SmemTensor>
  __device__ static void load_keys(SmemTensor&& dst, int tid, const Element* base,
                                   int64_t row_stride, const int32_t (&keys)[kKeysPerThread]) {
    const int chunk = tid % kThreadsPerRow, r0 = tid / kThreadsPerRow;
    constexpr int kElems = 16 / int(sizeof(Element));
    // In the 128-byte-swizzled K-major layout a row's byte offset is (r % 8) * 128 + (r / 8) *
    // 1024 + (column part), and the swizzle only mixes bits 4-9 with bits 7-9 (= r % 8). Rows
    // r and r + kKeyRowsPerPass (a multiple of 8) are therefore exactly kKeyRowsPerPass * 128
    // bytes apart: one swizzled address per chunk group, then plain increments (keeps the
    // producer free of per-row address arithmetic).
    static_assert(kKeyRowsPerPass % 8 == 0, "rows per pass must keep the swizzle phase");
    const int64_t stride_bytes = row_stride * int64_t(sizeof(Element));
#pragma unroll
    for (int q = 0; q < kChunksPerThread; ++q) {
      const int col = (chunk + q * kThreadsPerRow) * kElems;
      Element* d0 = &dst(r0, col);
      const char* src0 = reinterpret_cast<const char*>(base + col);
#pragma unroll
      for (int it = 0; it < kKeysPerThread; ++it) {
        const bool ok = keys[it] >= 0;
        const char* src = src0 + (ok ? int64_t(keys[it]) * stride_bytes : 0);
        cp_async_16(d0 + it * kKeyRowsPerPass * 64, src, ok);
      }
    }
  }

  // Contiguous tiles (dense, the SparseK window; Q as two 64-row blocks, kRows = 64): rows
  // start + r, r < min(count, kRows); the source pointer steps by kKeyRowsPerPass rows, so no
  // per-row index or 64-bit product is kept.
  template <int kRows = Traits::kBlockN, class SmemTensor>
  __device__ static void load_contiguous(SmemTensor&& dst, int tid, const Element* base,
                                         int64_t row_stride, int64_t start, int count) {
    static_assert(kRows % kKeyRowsPerPass == 0, "whole passes of the producer threads");
    const int chunk = tid % kThreadsPerRow, r0 = tid / kThreadsPerRow;
    constexpr int kElems = 16 / int(sizeof(Element));
    const char* row0 = reinterpret_cast<const char*>(base + (start + r0) * row_stride);
    const int64_t step = int64_t(kKeyRowsPerPass) * row_stride * int64_t(sizeof(Element));
#pragma unroll
    for (int q = 0; q < kChunksPerThread; ++q) {
      const int col = (chunk + q * kThreadsPerRow) * kElems;
      Element* d0 = &dst(r0, col);
      const char* src = row0 + col * int(sizeof(Element));
      const char* any = reinterpret_cast<const char*>(base + col);  // row 0: always valid
#pragma unroll
      for (int it = 0; it < kRows / kKeyRowsPerPass; ++it) {
        const bool ok = r0 + it * kKeyRowsPerPass < count;
        // Past the end: a valid address with src-size 0 (zero-fill, nothing read).
        cp_async_16(d0 + it * kKeyRowsPerPass * 64, ok ? src : any, ok);
        src += step;
      }
    }
  }
};

}  // namespace bsk::sm90
