// The producer warpgroup: loads Q once and every K/V tile of the KV iterator into the stage
// ring with cp.async (16-byte chunks written straight into the swizzled layout WGMMA reads), so
// contiguous and gathered rows share one path. Completion is signalled on mbarriers with
// cp.async.mbarrier.arrive.noinc: each of the 128 producer threads arrives once per barrier
// phase, after its own copies land.
#pragma once

#include <cutlass/arch/barrier.h>

#include <cute/tensor.hpp>

#include "bsk/kernels/sm90/kv_iterator.h"

namespace bsk::sm90 {

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  uint32_t s = cute::cast_smem_ptr_to_uint(smem);
  int n = valid ? 16 : 0;  // src-size 0 zero-fills the destination
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
  uint32_t s = cute::cast_smem_ptr_to_uint(smem);
  int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}

template <class Traits>
struct CpAsyncProducer {
  using Element = typename Traits::Element;
  static constexpr int kChunks = Traits::kChunksPerRow;
  static constexpr int kRowsPerPass = 128 / kChunks;

  static constexpr int kKeysPerThread = Traits::kBlockN / kRowsPerPass;

  // The key index of each row this thread copies (-1: past the tile's end). All index loads of a
  // gathered tile are issued together, before any copy, so their latencies overlap; K and V
  // share them.
  __device__ static void fetch_keys(const KvTile& t, int tid, int32_t (&keys)[kKeysPerThread]) {
    const int r0 = tid / kChunks;
#pragma unroll
    for (int it = 0; it < kKeysPerThread; ++it) {
      const int r = r0 + it * kRowsPerPass;
      keys[it] = r < t.count ? (t.gathered ? __ldg(t.list + r) : int32_t(t.start + r)) : -1;
    }
  }

  // Copies the tile's rows base[keys * row_stride] into dst (zero-fill past the end).
  template <class SmemTensor>
  __device__ static void load_keys(SmemTensor&& dst, int tid, const Element* base,
                                   int64_t row_stride, const int32_t (&keys)[kKeysPerThread]) {
    const int chunk = tid % kChunks, r0 = tid / kChunks;
    constexpr int kElems = 16 / int(sizeof(Element));
    // In the 128-byte-swizzled K-major layout a row's byte offset is (r % 8) * 128 + (r / 8) *
    // 1024 + (column part), and the swizzle only mixes bits 4-9 with bits 7-9 (= r % 8). Rows
    // r and r + kRowsPerPass (a multiple of 8) are therefore exactly kRowsPerPass * 128 bytes
    // apart: one swizzled address per thread, then plain increments (keeps the producer, which
    // runs on few registers, free of per-row address arithmetic).
    static_assert(kRowsPerPass % 8 == 0, "rows per pass must keep the swizzle phase");
    Element* d0 = &dst(r0, chunk * kElems);
    const char* src0 = reinterpret_cast<const char*>(base + chunk * kElems);
    const int64_t stride_bytes = row_stride * int64_t(sizeof(Element));
#pragma unroll
    for (int it = 0; it < kKeysPerThread; ++it) {
      const bool ok = keys[it] >= 0;
      const char* src = src0 + (ok ? int64_t(keys[it]) * stride_bytes : 0);
      cp_async_16(d0 + it * kRowsPerPass * 64, src, ok);
    }
  }

  // Copies rows [0, kRows) of a tile; row r comes from row_ptr(r) (nullptr: zero-fill, with
  // `any` as a harmless valid address for the instruction).
  template <int kRows, class SmemTensor, class RowPtr>
  __device__ static void load_rows(SmemTensor&& dst, int tid, const Element* any,
                                   RowPtr&& row_ptr) {
    int chunk = tid % kChunks;
    int r0 = tid / kChunks;
#pragma unroll 4
    for (int r = r0; r < kRows; r += kRowsPerPass) {
      const Element* src = row_ptr(r);
      void* d = &dst(r, chunk * (16 / int(sizeof(Element))));
      cp_async_16(d, src ? src + chunk * (16 / int(sizeof(Element))) : any, src != nullptr);
    }
  }
};

}  // namespace bsk::sm90
