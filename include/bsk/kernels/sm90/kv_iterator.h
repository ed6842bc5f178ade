// KV iterators: which key rows each KV tile of a query tile holds. The producer and the
// consumers both walk them, so they are cheap, deterministic functions of the tile index.
//  - DenseKvIterator: contiguous tiles over [0, kv_end) (kv_end cut at the causal diagonal).
//  - SparseKKvIterator: first the gathered tiles of the query tile's selection union (a sorted
//    list built by the selection kernel), then the window as contiguous tiles over
//    [max(0, p0 - window + 1), p1], where p0..p1 are the tile's query positions. The union keys
//    newer than the first row's candidates (selected by later rows, while older rows still see
//    them in their window) are not gathered: they all lie in the first window tile, which is
//    "mixed": their n_j and u_j go into a metadata slot and one mask covers both roles (with
//    window = 0, a mixed tile over (p0, p1] with an empty window). The gathered tiles then hold
//    only keys that every row may select, at most k_select of them (a union of k + 1 .. k + 127
//    keys would otherwise cost one more, mostly empty, tile).
#pragma once

#include <cstdint>

#include "kernels/kernels.h"

namespace bsk::sm90 {

struct KvTile {
  int64_t start = 0;              // contiguous tile: first key
  const int32_t* list = nullptr;  // gathered tile: key indices (list[0..count))
  const int32_t* rows = nullptr;  // gathered tile: rows of the CTA that select each key (n_j)
  const float* u = nullptr;       // gathered tile: each key's score (0 where not finite)
  int count = 0;                  // valid rows, <= kBlockN
  int meta_count = 0;             // gathered or mixed tile: entries of list/rows/u
  bool gathered = false;
  bool mixed = false;  // contiguous tile whose selected keys' (j, n_j, u_j) are list/rows/u
};

// Key positions are 32-bit here (the API guarantees Sk < 2^31): the iterators live in the
// producer's few registers across the whole KV loop.
template <int kBlockM, int kBlockN>
struct DenseKvIterator {
  int kv_end = 0;
  int num_tiles = 0;

  __device__ DenseKvIterator(const kernels::AttnFwdParams& p, int m_block) {
    int64_t end = p.seqlen_k;
    if (p.causal) {
      int64_t last_row = (int64_t(m_block) + 1) * kBlockM - 1;
      if (last_row > p.seqlen_q - 1) last_row = p.seqlen_q - 1;
      int64_t last_pos = p.seqlen_k - p.seqlen_q + last_row;
      end = last_pos + 1 < 0 ? 0 : (last_pos + 1 < p.seqlen_k ? last_pos + 1 : p.seqlen_k);
    }
    kv_end = int(end);
    num_tiles = (kv_end + kBlockN - 1) / kBlockN;
  }
  __device__ KvTile tile(int it) const {
    KvTile t;
    const int start = it * kBlockN, rest = kv_end - start;
    t.start = start;
    t.count = rest < kBlockN ? rest : kBlockN;
    return t;
  }
};

template <int kBlockM, int kBlockN>
struct SparseKKvIterator {
  const int32_t* list = nullptr;
  const int32_t* rows = nullptr;
  const float* u = nullptr;
  int old_count = 0;  // gathered union keys (list[0, old_count)), then the mixed tile's
  int mix_count = 0;
  int num_gathered = 0;
  int win_lo = 0, win_end = 0;
  int num_tiles = 0;

  // The query tile's union slot: its entries start at union_* + slot * union_cap.
  __device__ static int64_t union_slot(const kernels::SparseKFwdParams& p, int m_block, int batch,
                                       int head_kv) {
    const auto& a = p.attn;
    const int64_t n_tiles = (a.seqlen_q + p.tile_q - 1) / p.tile_q;
    return (int64_t(batch) * a.num_heads_kv + head_kv) * n_tiles + m_block;
  }
  __device__ SparseKKvIterator(const kernels::SparseKFwdParams& p, int m_block, int batch,
                               int head_kv) {
    const int64_t slot = union_slot(p, m_block, batch, head_kv);
    init(p, m_block, slot, p.union_cnt[slot], p.union_old[slot]);
  }
  // With the union's counts already known (list_count entries, the first old_count gathered).
  __device__ SparseKKvIterator(const kernels::SparseKFwdParams& p, int m_block, int batch,
                               int head_kv, int list_count, int old) {
    init(p, m_block, union_slot(p, m_block, batch, head_kv), list_count, old);
  }
  __device__ void init(const kernels::SparseKFwdParams& p, int m_block, int64_t slot,
                       int list_count, int old) {
    const auto& a = p.attn;
    list = p.union_idx + slot * p.union_cap;
    rows = p.union_rows + slot * p.union_cap;
    u = p.union_u + slot * p.union_cap;
    old_count = old;
    mix_count = list_count - old_count;
    num_gathered = (old_count + kBlockN - 1) / kBlockN;
    int64_t first_row = int64_t(m_block) * kBlockM;
    int64_t last_row =
        first_row + kBlockM - 1 < a.seqlen_q - 1 ? first_row + kBlockM - 1 : a.seqlen_q - 1;
    int64_t p0 = a.seqlen_k - a.seqlen_q + first_row, p1 = a.seqlen_k - a.seqlen_q + last_row;
    int num_window = 0;
    if (p.window > 0) {
      win_lo = int(p0 - p.window + 1 < 0 ? 0 : p0 - p.window + 1);
      win_end = int(p1 + 1);
      // One key lower when that makes every window tile whole (a full query tile and a window
      // that is a multiple of kBlockN: kBlockN - 1 + window keys), so that none is a partial
      // tile on cp.async. The extra key is older than every row's window and not among the
      // union's newer keys: the masks drop it (the union's older part holds it if selected).
      if (win_lo > 0 && (win_end - win_lo) % kBlockN == kBlockN - 1) --win_lo;
      num_window = (win_end - win_lo + kBlockN - 1) / kBlockN;
    } else if (mix_count > 0) {
      // No window: the union keys newer than p0 (candidates of some rows only) form one mixed
      // tile over (p0, p1] with an empty window.
      win_lo = int(p0 + 1);
      win_end = int(p1 + 1);
      num_window = 1;
    }
    num_tiles = num_gathered + num_window;
  }
  __device__ KvTile tile(int it) const {
    KvTile t;
    if (it < num_gathered) {
      t.gathered = true;
      t.list = list + int64_t(it) * kBlockN;
      t.rows = rows + int64_t(it) * kBlockN;
      t.u = u + int64_t(it) * kBlockN;
      int rest = old_count - it * kBlockN;
      t.count = rest < kBlockN ? rest : kBlockN;
      t.meta_count = t.count;
    } else {
      const int start = win_lo + (it - num_gathered) * kBlockN, rest = win_end - start;
      t.start = start;
      t.count = rest < kBlockN ? rest : kBlockN;
      if (it == num_gathered && mix_count > 0) {
        // The union's last mix_count keys, all in [L0, L0 + kBlockN - 1) (L0 = p0 - window + 1,
        // the first row's candidate count), inside this tile (which starts at L0 or L0 - 1).
        t.mixed = true;
        t.list = list + old_count;
        t.rows = rows + old_count;
        t.u = u + old_count;
        t.meta_count = mix_count;
      }
    }
    return t;
  }
};

}  // namespace bsk::sm90
