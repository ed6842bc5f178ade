// Definitions of the instantiation entry points: the tile configuration per head dim.
#pragma once

#include <cstdlib>

#include "bsk/kernels/sm90/attention_kernel.h"
#include "kernels/sm90/launch.h"

namespace bsk::sm90 {

template <class Element, int kHeadDim, int kBlockN = 128>
using FwdTraits = AttnTraits<Element, kHeadDim, kBlockN, /*kStages=*/2>;

// Dense D = 64 KV tiles: 128 or 192 keys, chosen per call. At D = 64 a tile's softmax costs as
// much as at D = 128 against half the GEMM work, so per-tile overheads weigh twice as much and
// wider tiles pay, except where the last tile is mostly padding or, causal, where the diagonal
// tiles' masked part grows with the tile. H200 (scripts/time_kernels.py --only dense --D 64,
// B * S = 65536, us/head 128 -> 192 keys, 4915d47 in a wide build): non-causal S 512 23.3 ->
// 25.5, 1024 42.5 -> 44.4, 1536 59.6 -> 55.5, 2048 81.0 -> 81.8, 4096 164.1 -> 158.8; causal
// 512 17.4 -> 20.4, 1024 28.7 -> 30.6, 1536 39.3 -> 39.7, 2048 50.2 -> 49.8, 4096 88.6 -> 86.5
// (cuDNN in the same processes moves by up to 5%). So: non-causal the smaller of
// ceil(Sk / N) * (N + 32) (32 keys of per-tile overhead), causal 192 from Sk 4096 on. 256 keys
// spill (412 bytes at 168 registers); the 192-key kernel spills 8 bytes. BSK_DENSE_D64_BLOCKN=
// 128|192 (read once) forces one, for measurement (the kernel tests passed with 192 forced for
// every D = 64 shape). SparseK keeps 128 (one metadata key per producer thread).
inline int dense_d64_block_n(int64_t sk, bool causal) {
  static const int forced = [] {
    const char* v = std::getenv("BSK_DENSE_D64_BLOCKN");
    const int n = v ? std::atoi(v) : 0;
    return n == 128 || n == 192 ? n : 0;
  }();
  if (forced != 0) return forced;
  if (causal) return sk >= 4096 ? 192 : 128;
  constexpr int64_t c = 32;
  return (sk + 191) / 192 * (192 + c) < (sk + 127) / 128 * (128 + c) ? 192 : 128;
}

template <class Element, int kHeadDim>
void run_dense_fwd(const kernels::AttnFwdParams& p) {
  if constexpr (kHeadDim == 64) {
    if (dense_d64_block_n(p.seqlen_k, p.causal) == 192) {
      launch_attention_fwd<FwdTraits<Element, 64, 192>, DenseMode>(p, p);
      return;
    }
  }
  launch_attention_fwd<FwdTraits<Element, kHeadDim>, DenseMode>(p, p);
}

template <class Element, int kHeadDim>
void run_sparsek_fwd(const kernels::SparseKFwdParams& p) {
  static_assert(FwdTraits<Element, kHeadDim>::kBlockM == 128, "union tiles are 128 queries");
  if (p.tile_q != 128 || p.union_idx == nullptr || p.union_rows == nullptr ||
      p.union_u == nullptr || p.union_cnt == nullptr || p.union_old == nullptr)
    throw CudaError(
        "sparsek_attention_fwd kernel: needs the selection's 128-query tile unions with their "
        "row counts, scores and old-key counts (union_idx, union_rows, union_u, union_cnt, "
        "union_old)");
  launch_attention_fwd<FwdTraits<Element, kHeadDim>, SparseKMode>(p, p.attn);
}

}  // namespace bsk::sm90
