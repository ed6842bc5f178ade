// Definitions of the instantiation entry points: the tile configuration per head dim.
#pragma once

#include "bsk/kernels/sm90/attention_kernel.h"
#include "kernels/sm90/launch.h"

namespace bsk::sm90 {

template <class Element, int kHeadDim, int kBlockN = 128>
using FwdTraits = AttnTraits<Element, kHeadDim, kBlockN, /*kStages=*/2>;

#if !defined(BSK_DENSE_D64_BLOCKN)
#define BSK_DENSE_D64_BLOCKN 192
#endif
// Dense tiles: D = 64 takes 192-key tiles. At D = 64 a tile's softmax costs as much as at
// D = 128 against half the GEMM work, so per-tile overheads weigh twice as much. H200, same-run
// cuDNN: 128 keys 0.96x non-causal and causal (74324d0), 192 keys 0.99x / 0.97x; 256 keys spill
// (412 bytes at 168 registers). SparseK keeps 128 (one metadata key per producer thread).
template <class Element, int kHeadDim>
using DenseTraits = FwdTraits<Element, kHeadDim, kHeadDim == 64 ? BSK_DENSE_D64_BLOCKN : 128>;

template <class Element, int kHeadDim>
void run_dense_fwd(const kernels::AttnFwdParams& p) {
  launch_attention_fwd<DenseTraits<Element, kHeadDim>, DenseMode>(p, p);
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
