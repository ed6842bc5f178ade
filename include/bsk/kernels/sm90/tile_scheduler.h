// Persistent tile scheduler: the grid holds one CTA per SM and each CTA runs work tiles (query
// tile, head, batch) until none is left: first t = blockIdx.x, then whatever the launch's atomic
// counter hands out (dynamic, so CTAs that drew heavy causal tiles take fewer). The producer
// loads the next tile's Q and K/V while the consumers finish the current one (no per-CTA
// launch, pipeline fill or epilogue left exposed).
//  - Tiles of one (batch, head) are consecutive, so the ~gridDim.x tiles in flight at any time
//    cover a few heads and their K/V stays in L2.
//  - Within a head the query tiles go last-first: causal and SparseK work grows with the query
//    tile index, so heavy tiles come early and the short ones fill the end of the launch.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>

namespace bsk::sm90 {

struct TileCoord {
  int m_block;
  int head;
  int batch;
  int head_kv;
};

// Work-tile counters of persistent launches, zero at module load. A launch takes the next slot
// of the ring (host side) and the CTA that takes the launch's last tile resets it to zero, so a
// slot is clean again once its kernel ends; concurrent launches (other streams) use other slots.
// One ring per translation unit (per kernel instantiation file).
constexpr int kTileCounterSlots = 4096;
static __device__ int g_tile_counters[kTileCounterSlots];
inline int next_counter_slot() {
  static std::atomic<unsigned> next{0};
  return int(next.fetch_add(1, std::memory_order_relaxed) % kTileCounterSlots);
}

// Built on the host and passed as a kernel parameter, so its fields sit in the constant bank
// and cost the kernel no registers.
struct PersistentTileScheduler {
  int num_m_blocks = 0;
  int num_heads = 0;
  int heads_per_kv = 1;
  int num_tiles = 0;  // checked on the host to fit in int

  PersistentTileScheduler(int64_t seqlen_q, int block_m, int64_t heads, int64_t heads_kv,
                          int64_t batch, int64_t* total) {
    num_m_blocks = int((seqlen_q + block_m - 1) / block_m);
    num_heads = int(heads);
    heads_per_kv = int(heads / heads_kv);
    *total = int64_t(num_m_blocks) * heads * batch;
    num_tiles = *total > int64_t(INT32_MAX) ? 0 : int(*total);
  }
  int grid(int num_sms) const { return num_tiles < num_sms ? num_tiles : num_sms; }
  __device__ TileCoord coord(int t) const {
    const int bh = t / num_m_blocks;
    const int mi = t - bh * num_m_blocks;
    const int h = bh % num_heads;
    return {num_m_blocks - 1 - mi, h, bh / num_heads, h / heads_per_kv};
  }
};

}  // namespace bsk::sm90
