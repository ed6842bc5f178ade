// Maps CTAs to (query tile, head, batch). Causal work grows with the query tile index, so the
// heaviest tiles are issued first: the tail of the grid is made of short tiles.
#pragma once

#include <cstdint>

namespace bsk::sm90 {

struct TileCoord {
  int m_block;
  int head;
  int batch;
};

struct HeaviestFirstScheduler {
  int num_m_blocks;
  bool reverse;  // true when later query tiles carry more work (causal, SparseK)

  __host__ __device__ dim3 grid(int heads, int batch) const {
    return dim3(num_m_blocks, heads, batch);
  }
  __device__ TileCoord get() const {
    int m = reverse ? num_m_blocks - 1 - int(blockIdx.x) : int(blockIdx.x);
    return {m, int(blockIdx.y), int(blockIdx.z)};
  }
};

}  // namespace bsk::sm90
