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
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n)
               : "memory");
}
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
  uint32_t s = cute::cast_smem_ptr_to_uint(smem);
  int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(n)
               : "memory");
}

template <class Traits>
struct CpAsyncProducer {
  using Element = typename Traits::Element;
  static constexpr int kChunks = Traits::kChunksPerRow;
  static constexpr int kRowsPerPass = 128 / kChunks;

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
