// TMA loads of contiguous Q/K/V tiles into the 128-byte-swizzled K-major layout the WGMMAs read
// (GMMA::Layout_K_SW128_Atom tiled over rows first: each 64-column half of a tile is a run of
// 8-row, 1 KB swizzle atoms, exactly what a {64 columns, rows} box with
// CU_TENSOR_MAP_SWIZZLE_128B writes). One producer thread issues a tile's boxes and arms the
// stage's mbarrier with the transaction bytes; the other producer threads arrive plainly, so the
// barriers keep the arrival count of the cp.async path and both paths can share a ring.
//
// Only whole tiles inside the tensor go through TMA: a box past the tile's valid rows would read
// real keys that the cp.async path zero-fills (a masked column times a non-finite V row must stay
// out of the output), while rows past the end of the tensor are zero-filled by TMA itself.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cutlass/arch/barrier.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/kernels.h"

namespace bsk::sm90 {

constexpr int kTmaBoxCols = 64;  // 128 bytes of fp16/bf16: one swizzle row

// Tensor maps of Q (64-row boxes, one per consumer warpgroup block) and K, V (kBlockN-row
// boxes), over [batch, head, row, dim] with the tensors' own strides; enabled == 0: cp.async.
struct TmaMaps {
  CUtensorMap q, k, v;
  int enabled = 0;
};

// Box (c0 = column, c1 = row, c2 = head, c3 = batch) into shared memory at smem, completing
// its bytes on bar.
__device__ __forceinline__ void tma_load_box(void* smem, const CUtensorMap* map, int c0, int c1,
                                             int c2, int c3, uint64_t* bar) {
  const uint32_t s = cute::cast_smem_ptr_to_uint(smem);
  const uint32_t b = cute::cast_smem_ptr_to_uint(bar);
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(s),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(b)
      : "memory");
}

// kBlocks consecutive (kRows x head_dim) blocks starting at row `row` of (head, batch) into
// dst, kBlockStride elements apart, each a block of the row-first SW128 layout (kRows x 64 columns
// per run of 1 KB atoms). Thread 0 of the producer arms bar with all their bytes and issues the
// boxes; every other producer thread only arrives.
template <class Element, int kRows, int kHeadDim, int kBlocks = 1,
          int kBlockStride = (kRows * kHeadDim)>
__device__ __forceinline__ void tma_load_tile(Element* dst, const CUtensorMap* map, int row,
                                              int head, int batch, uint64_t* bar, int tid) {
  constexpr uint32_t kBytes = uint32_t(kBlocks) * kRows * kHeadDim * sizeof(Element);
  if (tid == 0) {
    cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(bar, kBytes);
#pragma unroll
    for (int blk = 0; blk < kBlocks; ++blk)
#pragma unroll
      for (int h = 0; h < kHeadDim / kTmaBoxCols; ++h)
        tma_load_box(dst + blk * kBlockStride + h * kRows * kTmaBoxCols, map, h * kTmaBoxCols,
                     row + blk * kRows, head, batch, bar);
  } else {
    cutlass::arch::ClusterBarrier::arrive(bar);
  }
}

// Host: encodes one map, or returns false when TMA cannot describe the tensor (the caller then
// keeps the cp.async path). stride = {batch, row, head} in elements; the last dim is contiguous.
inline bool encode_tma_map(CUtensorMap* map, DType dtype, const void* base, int64_t head_dim,
                           int64_t rows, int64_t heads, int64_t batch, const int64_t (&stride)[3],
                           int box_rows) {
  using Encode =
      CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<Encode>(fn);
  }();
  if (encode == nullptr || head_dim % kTmaBoxCols != 0 || rows < 1 || heads < 1 || batch < 1)
    return false;
  constexpr int64_t kEs = 2;  // fp16 / bf16
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  // Strides of size-1 dimensions are never stepped: any valid value will do.
  const int64_t sb[3] = {stride[1] * kEs, stride[2] * kEs, stride[0] * kEs};  // row, head, batch
  const int64_t sz[3] = {rows, heads, batch};
  cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(rows), cuuint64_t(heads),
                        cuuint64_t(batch)};
  cuuint64_t strides[3];
  for (int i = 0; i < 3; ++i) {
    int64_t s = sb[i];
    if (sz[i] == 1) s = 16;
    if (s <= 0 || s % 16 != 0 || s >= (int64_t(1) << 40)) return false;
    strides[i] = cuuint64_t(s);
  }
  cuuint32_t box[4] = {cuuint32_t(kTmaBoxCols), cuuint32_t(box_rows), 1, 1};
  cuuint32_t estr[4] = {1, 1, 1, 1};
  const CUtensorMapDataType dt = dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                           : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return encode(map, dt, 4, const_cast<void*>(base), dims, strides, box, estr,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// encode_tma_map through a small per-thread cache (a map depends only on these values): with
// three maps encoded on the host at every launch, the bench's short rows (decode, S = 512) were
// 35-38 us per call slower than with cp.async.
inline bool encode_tma_map_cached(CUtensorMap* map, DType dtype, const void* base, int64_t head_dim,
                                  int64_t rows, int64_t heads, int64_t batch,
                                  const int64_t (&stride)[3], int box_rows) {
  struct Key {
    const void* base;
    int64_t dtype, head_dim, rows, heads, batch, stride[3], box_rows;
  };
  struct Entry {
    CUtensorMap map;
    Key key;
    bool ok, used;
  };
  constexpr int kEntries = 16;
  thread_local Entry cache[kEntries] = {};
  thread_local int next = 0;
  Key key;
  std::memset(&key, 0, sizeof key);  // padding-free comparison below
  key.base = base;
  key.dtype = static_cast<int64_t>(dtype);
  key.head_dim = head_dim;
  key.rows = rows;
  key.heads = heads;
  key.batch = batch;
  for (int i = 0; i < 3; ++i) key.stride[i] = stride[i];
  key.box_rows = box_rows;
  for (Entry& e : cache)
    if (e.used && std::memcmp(&e.key, &key, sizeof key) == 0) {
      *map = e.map;
      return e.ok;
    }
  Entry& e = cache[next];
  next = (next + 1) % kEntries;
  e.key = key;
  e.used = true;
  e.ok = encode_tma_map(&e.map, dtype, base, head_dim, rows, heads, batch, stride, box_rows);
  *map = e.map;
  return e.ok;
}

// All three maps, or enabled = 0. BSK_ATTN_TMA=0 (read at every launch) keeps every tile on
// cp.async: the tests compare both paths.
inline TmaMaps make_tma_maps(const kernels::AttnFwdParams& a, int box_rows_kv, int box_rows_q) {
  TmaMaps m{};
  const char* env = std::getenv("BSK_ATTN_TMA");
  if (env != nullptr && env[0] == '0') return m;
  const bool ok = encode_tma_map_cached(&m.q, a.dtype, a.q, a.head_dim, a.seqlen_q, a.num_heads,
                                        a.batch, a.q_stride, box_rows_q) &&
                  encode_tma_map_cached(&m.k, a.dtype, a.k, a.head_dim, a.seqlen_k, a.num_heads_kv,
                                        a.batch, a.k_stride, box_rows_kv) &&
                  encode_tma_map_cached(&m.v, a.dtype, a.v, a.head_dim, a.seqlen_k, a.num_heads_kv,
                                        a.batch, a.v_stride, box_rows_kv);
  m.enabled = ok ? 1 : 0;
  return m;
}

}  // namespace bsk::sm90
