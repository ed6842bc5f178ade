// Persistent tile scheduler: the grid holds one CTA per SM and each CTA walks the work tiles
// (query tile, head, batch) t = blockIdx.x, blockIdx.x + gridDim.x, ... so the producer can load
// the next tile's Q and K/V while the consumers finish the current one (no per-CTA launch,
// pipeline fill or epilogue left exposed).
//  - Tiles of one (batch, head) are consecutive, so the ~gridDim.x tiles in flight at any time
//    cover a few heads and their K/V stays in L2.
//  - Within a head the query tiles go last-first: causal and SparseK work grows with the query
//    tile index, so heavy tiles come early and the round-robin assignment balances the CTAs.
#pragma once

#include <cstdint>

namespace bsk::sm90 {

struct TileCoord {
  int m_block;
  int head;
  int batch;
};

struct PersistentTileScheduler {
  int num_m_blocks = 0;
  int num_heads = 0;
  int64_t num_tiles = 0;

  __host__ __device__ PersistentTileScheduler(int64_t seqlen_q, int block_m, int heads, int batch)
      : num_m_blocks(int((seqlen_q + block_m - 1) / block_m)), num_heads(heads) {
    num_tiles = int64_t(num_m_blocks) * heads * batch;
  }
  __host__ __device__ int grid(int num_sms) const {
    return int(num_tiles < num_sms ? num_tiles : num_sms);
  }
  __device__ TileCoord coord(int64_t t) const {
    const int64_t bh = t / num_m_blocks;
    const int mi = int(t - bh * num_m_blocks);
    return {num_m_blocks - 1 - mi, int(bh % num_heads), int(bh / num_heads)};
  }
};

}  // namespace bsk::sm90
