// Tile shapes, shared-memory layouts and WGMMA configurations of the sm_90a attention engine.
//
// One CTA owns kBlockM = 128 query rows of one (batch, head): warpgroup 0 is the producer (loads
// Q once and K/V tiles into a kStages-deep ring), warpgroups 1 and 2 are consumers, 64 rows
// each, computing S = Q K^T (WGMMA, both operands in shared memory) and O += P V (WGMMA, P from
// registers) with an online softmax in between.
#pragma once

#include <cutlass/numeric_types.h>

#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include "bsk/kernels/sm90/phase_clock.h"

namespace bsk::sm90 {

using namespace cute;

template <class Element_, int kHeadDim_, int kBlockN_ = 128, int kStages_ = 2>
struct AttnTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;
  static constexpr int kWgRows = 64;  // rows per consumer warpgroup
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumerWGs = kBlockM / kWgRows;
  static constexpr int kThreads = 128 * (1 + kConsumerWGs);
  // setmaxnreg only moves registers between the warpgroups of a CTA: the CTA starts with
  // kEntryRegs per thread (__launch_bounds__(kThreads, 1)), and what the consumers gain the
  // producer must give up, or the consumers' setmaxnreg.inc waits forever.
  // 72 / 216 (= 504): with fewer than 72 the persistent producer spills its per-work-tile
  // state in the KV loop; at 216 no consumer reloads anything inside the KV loop (ptxas: no
  // spills in any of the eight instantiations since v14).
  static constexpr int kEntryRegs = (65536 / kThreads) / 8 * 8;  // 168 at 384 threads
  // The producer's share; the kernel gives the consumers the rest (216 each at 72).
  static constexpr int kProducerRegs = 72;
  static constexpr int kChunksPerRow = kHeadDim * int(sizeof(Element)) / 16;  // 16-byte chunks
  static constexpr int kMetaSlots = 2 * kStages;

  using MmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float,
                           Shape<Int<kWgRows>, Int<kBlockN>, Int<kHeadDim>>>()));
  using MmaPV =
      decltype(make_tiled_mma(GMMA::rs_op_selector<Element, Element, float,
                                                   Shape<Int<kWgRows>, Int<kHeadDim>, Int<kBlockN>>,
                                                   GMMA::Major::K, GMMA::Major::MN>()));

  using SmemAtom = GMMA::Layout_K_SW128_Atom<Element>;
  // Q: one 64-row block per consumer warpgroup.
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kWgRows>, Int<kHeadDim>>{}));
  // K and V: (key, dim, stage), rows K-major (dim contiguous) as they sit in global memory.
  using SmemLayoutKV =
      decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // V^T as the B operand of the PV GEMM: (dim, key, stage) over the same bytes (MN-major).
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                                  Stride<Int<kBlockN>, _1, Int<kBlockN * kHeadDim>>{})));

  // The SM90 accumulator of a 64 x N WGMMA holds, per thread, ((2 cols, 2 rows, N/8), 1, 1);
  // the register A operand of the next WGMMA wants ((2, 2, 2), 1, N/16) over the same values.
  using LayoutPAsA =
      Layout<Shape<Shape<_2, _2, _2>, _1, Int<kBlockN / 16>>, Stride<Stride<_1, _2, _4>, _0, _8>>;

  // Q has a ring of two buffers (the next work tile's Q loads into one while the current tile
  // runs on the other), and the epilogue stages each warpgroup's 64 output rows (padded by 16
  // bytes, epilogue.h) in that warpgroup's block of the finished tile's buffer, so each block is
  // the larger of the two, rounded up to whole 1 KB swizzle atoms.
  static constexpr int kQBufs = 2;
  static constexpr int kStageElems = kWgRows * (kHeadDim + 8);
  static constexpr int kAtomElems = 1024 / int(sizeof(Element));
  static_assert(kStageElems >= kWgRows * kHeadDim, "the stage covers the Q block");
  static constexpr int kQBlockElems = (kStageElems + kAtomElems - 1) / kAtomElems * kAtomElems;
  static constexpr int kQElems = kConsumerWGs * kQBlockElems;  // one Q buffer
  static constexpr int kKVElems = kBlockN * kHeadDim * kStages;

  struct SharedStorage {
    alignas(1024) Element q[kQBufs * kQElems];
    alignas(1024) Element k[kKVElems];
    alignas(1024) Element v[kKVElems];
    // Unused. The measured build of the Q ring (BSK_ATTN_Q_RING=1 at 54cc664) had these 16 bytes
    // before the metadata arrays; without them the metadata's shared-memory offsets change and
    // ptxas schedules the consumer loop differently (SASS diffed), which has not been timed.
    alignas(16) Element unused_pad[8];
    // Key metadata of gathered and mixed tiles (j, n_j and u_j as the selection left them with
    // the tile's union; a mixed tile fills only n_j and u_j, by column), in a ring of its own
    // that is deeper than the K ring: the mask/gate hook still reads tile i's metadata after
    // the K stage of tile i has been released, and the producer reads the key indices again
    // for V. Each slot has its own "full" and "empty" barriers (SparseK only): the producer's
    // stores are released to the consumers' reads, and their reads (arrivals after the gate)
    // to the producer's reuse of the slot.
    int32_t key_idx[kMetaSlots][kBlockN];   // key index j (INT32_MAX past the tile's end)
    int32_t key_rows[kMetaSlots][kBlockN];  // n_j: rows below it select j where it is a candidate
    float key_u[kMetaSlots][kBlockN];       // score u_j (0 where not finite), for the gate
    // Q buffer s loaded / free again (after the epilogue of the tile that used it).
    alignas(8) uint64_t bar_q[kQBufs];
    uint64_t bar_q_empty[kQBufs];
    int next_tile[2];      // the work tile after work tile w, in slot w % 2
    uint64_t bar_tile[2];  // next_tile[s] written
    uint64_t bar_meta_empty[kMetaSlots];
    uint64_t bar_meta_full[kMetaSlots];  // slot written (plain stores, then arrive: release)
    uint64_t bar_k[kStages];
    uint64_t bar_v[kStages];
    uint64_t bar_empty_k[kStages];  // K stage consumed (after S = Q K^T)
    uint64_t bar_empty_v[kStages];  // V stage consumed (after O += P V)
    // Work tile w's header in slot w % kQBufs (SparseK): its rows' tau and its union's counts
    // (gathered keys, mixed-tile keys), stored by the producer before it arrives on the tile's
    // Q barrier and read by the consumers after their wait on it; the slot is reused with the Q
    // buffer, after the consumers release that.
    float row_tau[kQBufs][kBlockM];
    int32_t union_counts[kQBufs][2];
#if defined(BSK_ATTN_PROFILE)
    unsigned prof[3][kPhaseWarps][kPhaseSlots];  // phase_clock.h (per role, warp, phase)
#endif
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage)) + 1024;  // + alignment slack
};

}  // namespace bsk::sm90
