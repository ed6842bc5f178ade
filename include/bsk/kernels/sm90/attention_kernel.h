// The sm_90a attention kernel template: composes the producer (mainloop_producer.h), the KV
// iterator (kv_iterator.h), the WGMMA consumers with the online softmax (softmax.h), the mask
// and gate hook (mask_hook.h), the epilogue (epilogue.h) and the tile scheduler
// (tile_scheduler.h). Dense and SparseK attention are two Modes of this one template: they
// differ only in the KV iterator and the hook.
#pragma once

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include <cstdlib>
#include <cute/tensor.hpp>

#include "bsk/kernels/sm90/epilogue.h"
#include "bsk/kernels/sm90/kernel_traits.h"
#include "bsk/kernels/sm90/kv_iterator.h"
#include "bsk/kernels/sm90/mainloop_producer.h"
#include "bsk/kernels/sm90/mask_hook.h"
#include "bsk/kernels/sm90/phase_clock.h"
#include "bsk/kernels/sm90/softmax.h"
#include "bsk/kernels/sm90/tile_scheduler.h"
#include "bsk/kernels/sm90/tma_load.h"
#include "kernels/kernels.h"

// Development switch: 0 builds the dense kernel without the softmax pin (v28 in the notes).
#ifndef BSK_DENSE_PIN_SOFTMAX
#define BSK_DENSE_PIN_SOFTMAX 1
#endif

namespace bsk::sm90 {

template <class Traits>
struct DenseMode {
  static constexpr bool kHasMeta = false;  // no per-key metadata ring
  // The consumers build each work tile's iterator and hook from the parameters alone, before
  // the previous tile's epilogue (no work-tile header).
  static constexpr bool kTileHeader = false;
  // TMA for Q and whole contiguous tiles; the producer's registers (the consumers get the rest).
  static constexpr bool kTma = true;
  static constexpr int kProducerRegs = Traits::kProducerRegs;
  using Params = kernels::AttnFwdParams;
  using Iterator = DenseKvIterator<Traits::kBlockM, Traits::kBlockN>;
  using Hook = DenseMaskHook<Traits::kBlockN>;
  __device__ static const kernels::AttnFwdParams& attn(const Params& p) { return p; }
  __device__ static Iterator iterator(const Params& p, int m, int, int) { return Iterator(p, m); }
  __device__ static Hook hook(const Params& p, int m, int row0, int, int,
                              const typename Traits::SharedStorage*) {
    return Hook(p, m, row0, Traits::kBlockM);
  }
};

template <class Traits>
struct SparseKMode {
  static constexpr bool kHasMeta = true;  // gathered tiles' key metadata ring
  // The union's counts and the rows' tau reach the consumers through the work tile's header in
  // shared memory (kernel_traits.h), which the producer fills from the loads it makes anyway:
  // the consumers' own global loads of them put an L2 round trip between two work tiles (the
  // iterator's counts are needed at once). Measured 4568 -> 4416 us at the seed shape (H200,
  // docs/kernel_notes.md v52).
  static constexpr bool kTileHeader = true;
  // TMA for Q and the whole contiguous tiles (the window's, which the iterator makes whole where
  // the window is a multiple of the tile), cp.async for the gathered and partial ones. With both
  // load paths in its loop the producer once spilled at 72 registers (v21 in docs/kernel_notes.md);
  // it no longer does, and the seed shape's attention kernel is 2.6% faster with TMA and whole
  // window tiles than on cp.async (4721 -> 4599 us, H200).
  static constexpr bool kTma = true;
  static constexpr int kProducerRegs = Traits::kProducerRegs;
  using Params = kernels::SparseKFwdParams;
  using Iterator = SparseKKvIterator<Traits::kBlockM, Traits::kBlockN>;
  using Hook = SparseKMaskHook<Traits::kBlockN, typename Traits::SharedStorage>;
  __device__ static const kernels::AttnFwdParams& attn(const Params& p) { return p.attn; }
  __device__ static Iterator iterator(const Params& p, int m, int b, int hkv) {
    return Iterator(p, m, b, hkv);
  }
  __device__ static Hook hook(const Params& p, int m, int row0, int b, int hkv,
                              const typename Traits::SharedStorage* sm) {
    return Hook(p, m, row0, Traits::kBlockM, b, hkv, sm);
  }
  // The consumers': from the header of the work tile in Q buffer qs.
  __device__ static Iterator header_iterator(const Params& p, int m, int b, int hkv,
                                             const typename Traits::SharedStorage* sm, int qs) {
    return Iterator(p, m, b, hkv, sm->union_counts[qs][0] + sm->union_counts[qs][1],
                    sm->union_counts[qs][0]);
  }
  __device__ static Hook header_hook(const Params& p, int m, int row0, int b, int hkv,
                                     const typename Traits::SharedStorage* sm, int qs) {
    return Hook(p, m, row0, Traits::kBlockM, b, hkv, sm, sm->row_tau[qs]);
  }
};

template <class Traits, template <class> class ModeT>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    attention_fwd_sm90_kernel(const __grid_constant__ typename ModeT<Traits>::Params params,
                              const __grid_constant__ PersistentTileScheduler sched,
                              int counter_slot, const __grid_constant__ TmaMaps tma) {
  using Mode = ModeT<Traits>;
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Barrier = cutlass::arch::ClusterBarrier;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kD = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages, kMetaSlots = Traits::kMetaSlots;
  constexpr bool kMeta = Mode::kHasMeta;
  // What the producer gives up goes to the consumers, in whole units of 8 registers.
  constexpr int kConsumerRegs =
      ((Traits::kThreads / 128) * Traits::kEntryRegs - Mode::kProducerRegs) / Traits::kConsumerWGs /
      8 * 8;
  static_assert(kConsumerRegs <= 256 && Mode::kProducerRegs % 8 == 0, "setmaxnreg limits");

  extern __shared__ char smem_raw[];
  // 1024-byte aligned by pointer arithmetic on smem_raw itself: through an integer round trip
  // the compiler no longer knows the storage is shared memory, and every plain access to it
  // (epilogue stage, metadata slots, next-tile words) becomes a generic load or store.
  const uint32_t raw_at = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  auto& sm = *reinterpret_cast<SharedStorage*>(smem_raw + ((1024u - (raw_at & 1023u)) & 1023u));
  const kernels::AttnFwdParams& a = Mode::attn(params);
  const int tid = threadIdx.x;
  const int wg = tid / 128;

  if (tid == 0) {
    // Buffers the consumers read with plain shared loads (the metadata slots, the next-tile
    // word, Q's release that orders them, and with the Q ring the epilogue stage) are released
    // by every consumer thread: an mbarrier arrive releases only the arriving thread's own
    // accesses.
    for (int s = 0; s < Traits::kQBufs; ++s) {
      Barrier::init(&sm.bar_q[s], 128);
      Barrier::init(&sm.bar_q_empty[s], Traits::kConsumerWGs * 128);
    }
    Barrier::init(&sm.bar_tile[0], 1);
    Barrier::init(&sm.bar_tile[1], 1);
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&sm.bar_k[s], 128);
      Barrier::init(&sm.bar_v[s], 128);
      Barrier::init(&sm.bar_empty_k[s], Traits::kConsumerWGs * 4);
      Barrier::init(&sm.bar_empty_v[s], Traits::kConsumerWGs * 4);
    }
    for (int s = 0; s < kMetaSlots; ++s) {
      Barrier::init(&sm.bar_meta_empty[s], Traits::kConsumerWGs * 128);
      Barrier::init(&sm.bar_meta_full[s], 128);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  // Both sides walk the same work tiles and the same KV tiles per work tile, so one running
  // count g of KV tiles (stage g % kStages, metadata slot g % kMetaSlots, and the phases) and
  // one count w of work tiles (the Q buffer's phase) keep them in step across work tiles.
  // Work tiles are handed out dynamically: the first is blockIdx.x, the next one producer
  // thread 0 takes from the launch's counter while the current tile loads, and passes to every
  // thread through next_tile[w % 2] and bar_tile[w % 2] (so causal CTAs stay balanced). Slot
  // w % 2 is written for the (w / 2)-th time after work tile w: its phase parity is (w / 2) & 1.
  int* const counter = &g_tile_counters[counter_slot];
  auto next_tile = [&](int w) -> int {
    Barrier::wait(&sm.bar_tile[w & 1], (w >> 1) & 1);
    asm volatile("" ::: "memory");  // (the wait's asm has no memory clobber)
    return sm.next_tile[w & 1];
  };
  if (wg == 0) {
    // ---------------- producer warpgroup ----------------
    cutlass::arch::warpgroup_reg_dealloc<Mode::kProducerRegs>();
    using Producer = CpAsyncProducer<Traits>;
    PhaseClock pc;
    if constexpr (kPhaseClock) pc.init(sm.prof[0][tid / 32], tid % 32 == 0);
    int g = 0, w = 0;
    for (int wt = blockIdx.x; wt < sched.num_tiles; ++w) {
      // Issued now, used after this tile's loads: the atomic's latency hides behind them.
      int grab = 0;
      if (tid == 0) grab = atomicAdd(counter, 1);
      const TileCoord tc = sched.coord(wt);
      const int b = tc.batch, h = tc.head, m = tc.m_block, hkv = tc.head_kv;
      // The next K tile's key metadata (j, n_j, u_j), loaded one tile ahead of its use. Tile 0's
      // entries start at the union's first entry whatever the counts say (a mixed tile's follow
      // the gathered ones, and it is tile 0 only when there are none), so these loads go out
      // beside the counts' instead of after them (entries past the counts are never used).
      int32_t pre_j = INT32_MAX, pre_n = 0;
      float pre_u = 0.f;
      // The work tile's header: row tid's tau, loaded beside the counts.
      float row_tau = 0.f;
      if constexpr (Mode::kTileHeader) {
        static_assert(kBlockM == 128, "one header row per producer thread");
        row_tau =
            __ldg(params.tau + Mode::Hook::tau_index(params, int64_t(m) * kBlockM + tid, b, hkv));
      }
      if constexpr (kMeta) {
        const int64_t e0 = Mode::Iterator::union_slot(params, m, b, hkv) * params.union_cap;
        if (tid < params.union_cap) {
          pre_j = __ldg(params.union_idx + e0 + tid);
          pre_n = __ldg(params.union_rows + e0 + tid);
          pre_u = __ldg(params.union_u + e0 + tid);
        }
      }
      const auto it = Mode::iterator(params, m, b, hkv);
      const Element* qb = static_cast<const Element*>(a.q) + b * a.q_stride[0] + h * a.q_stride[2];
      const Element* kb =
          static_cast<const Element*>(a.k) + b * a.k_stride[0] + hkv * a.k_stride[2];
      const Element* vb =
          static_cast<const Element*>(a.v) + b * a.v_stride[0] + hkv * a.v_stride[2];
      const int64_t row0 = int64_t(m) * kBlockM;
      {
        // Q buffer w % 2 is free after the epilogue of work tile w - 2 (which staged O there),
        // normally long before this load is issued: the load overlaps the whole of tile w - 1.
        pc.lap(0);
        constexpr int kQBufs = Traits::kQBufs;
        const int qs = w % kQBufs;
        Element* const q_dst = sm.q + qs * Traits::kQElems;
        if (w >= kQBufs) Barrier::wait(&sm.bar_q_empty[qs], ((w - kQBufs) / kQBufs) & 1);
        pc.lap(1);
        if constexpr (Mode::kTileHeader) {
          // Released by this thread's arrival on bar_q[qs] below (the consumers acquire it with
          // their wait); on the cp.async path that arrival is asynchronous, so a fence first.
          sm.row_tau[qs][tid] = row_tau;
          if (tid == 0) {
            sm.union_counts[qs][0] = it.old_count;
            sm.union_counts[qs][1] = it.mix_count;
          }
          if (!(Mode::kTma && tma.enabled)) __threadfence_block();
          asm volatile("" ::: "memory");  // (the arrive's asm has no memory clobber)
        }
        // Q as two 64-row blocks (one per consumer warpgroup), each a contiguous tile.
        auto sQ0 = make_tensor(make_smem_ptr(q_dst), typename Traits::SmemLayoutQ{});
        auto sQ1 = make_tensor(make_smem_ptr(q_dst + Traits::kQBlockElems),
                               typename Traits::SmemLayoutQ{});
        if (Mode::kTma && tma.enabled) {
          // Rows past seqlen_q are outside the tensor: TMA zero-fills them like cp.async.
          tma_load_tile<Element, Traits::kWgRows, kD, Traits::kConsumerWGs, Traits::kQBlockElems>(
              q_dst, &tma.q, int(row0), h, b, &sm.bar_q[qs], tid);
        } else {
          const int rows = int(a.seqlen_q - row0 < kBlockM ? a.seqlen_q - row0 : kBlockM);
          Producer::template load_contiguous<Traits::kWgRows>(sQ0, tid, qb, a.q_stride[1], row0,
                                                              rows);
          Producer::template load_contiguous<Traits::kWgRows>(
              sQ1, tid, qb, a.q_stride[1], row0 + Traits::kWgRows, rows - Traits::kWgRows);
          cutlass::arch::cpasync_barrier_arrive_noinc(&sm.bar_q[qs]);
        }
      }
      // K runs one tile ahead of V: the loads go K0, K1, V0, K2, V1, ..., V(n-1). V's stage
      // frees only after the P V two tiles back, so with K and V of a tile loaded together the
      // next K could not start before that wait either (one tile of lookahead for the loads
      // that gate every S = Q K^T); in this order K waits only for the S two tiles back. One
      // loop body serves both tensors, so their address arithmetic is not duplicated.
      const int n_tiles = it.num_tiles;
      pc.lap(2);
#pragma unroll 1
      for (int e = 0; e < 2 * n_tiles; ++e) {
        const bool is_v = e > 0 && (e == 2 * n_tiles - 1 || (e & 1) == 0);
        const int ti = !is_v ? (e + 1) / 2 : (e == 2 * n_tiles - 1 ? n_tiles - 1 : e / 2 - 1);
        const int gi = g + ti, s = gi % kStages, round = gi / kStages;
        const int slot = gi % kMetaSlots, mround = gi / kMetaSlots;
        const KvTile t = it.tile(ti);
        int32_t keys[Producer::kKeysPerThread];
        if constexpr (kMeta) {
          if (!is_v) {
            // The gathered tile's key metadata, one key per producer thread (kBlockN = 128):
            // (j, n_j, u_j) as the selection kernel left them with the tile's union, into the
            // slot once its previous tile's readers are done; released by a plain arrive. A
            // mixed tile's selected keys are scattered to their columns (n_j = 0 elsewhere).
            static_assert(kBlockN == 128, "one metadata key per producer thread");
            const bool meta_ok = (t.gathered || t.mixed) && tid < t.meta_count;
            const int32_t jm = meta_ok ? pre_j : INT32_MAX;
            const int32_t nm = meta_ok ? pre_n : 0;
            const float um = meta_ok ? pre_u : 0.f;
            if (ti + 1 < n_tiles) {
              const KvTile tn = it.tile(ti + 1);
              if ((tn.gathered || tn.mixed) && tid < tn.meta_count) {
                pre_j = __ldg(tn.list + tid);
                pre_n = __ldg(tn.rows + tid);
                pre_u = __ldg(tn.u + tid);
              }
            }
            pc.lap(3);
            if (mround > 0) Barrier::wait(&sm.bar_meta_empty[slot], (mround - 1) & 1);
            if (t.gathered) {
              // Every producer thread is past its reads of the slot's previous tile's keys.
              asm volatile("bar.sync 1, 128;\n" ::: "memory");
              sm.key_idx[slot][tid] = jm;
              sm.key_rows[slot][tid] = nm;
              sm.key_u[slot][tid] = um;
              // The producer threads read each other's key indices below (and for V).
              asm volatile("bar.sync 1, 128;\n" ::: "memory");
            } else if (t.mixed) {
              // Only the consumers read key_rows / key_u (the contiguous K/V copies need no
              // indices): clear the slot's columns, then scatter.
              sm.key_rows[slot][tid] = 0;
              sm.key_u[slot][tid] = 0.f;
              asm volatile("bar.sync 1, 128;\n" ::: "memory");
              if (meta_ok) {
                sm.key_rows[slot][jm - int(t.start)] = nm;
                sm.key_u[slot][jm - int(t.start)] = um;
              }
            }
            asm volatile("" ::: "memory");  // the stores stay above the arrive (no clobber)
            Barrier::arrive(&sm.bar_meta_full[slot]);
            pc.lap(7);
          }
          // A gathered tile's rows, for K and (one step later) V, from the slot's key indices.
          if (t.gathered) Producer::slot_keys(sm.key_idx[slot], tid, keys);
        }
        if (round > 0) Barrier::wait(&(is_v ? sm.bar_empty_v : sm.bar_empty_k)[s], (round - 1) & 1);
        pc.lap(is_v ? 5 : 4);
        uint64_t* full = &(is_v ? sm.bar_v : sm.bar_k)[s];
        if (Mode::kTma && tma.enabled && !t.gathered && t.count == kBlockN) {
          // A whole contiguous tile: one thread's TMA boxes instead of 128 threads' cp.async.
          tma_load_tile<Element, kBlockN, kD>((is_v ? sm.v : sm.k) + s * kBlockN * kD,
                                              is_v ? &tma.v : &tma.k, int(t.start), hkv, b, full,
                                              tid);
        } else {
          auto sX = make_tensor(make_smem_ptr(is_v ? sm.v : sm.k), typename Traits::SmemLayoutKV{});
          auto dst = [&](int r, int c) -> Element& { return sX(r, c, s); };
          const Element* xb = is_v ? vb : kb;
          const int64_t x_stride = is_v ? a.v_stride[1] : a.k_stride[1];
          if (t.gathered)
            Producer::load_keys(dst, tid, xb, x_stride, keys);
          else
            Producer::load_contiguous(dst, tid, xb, x_stride, t.start, t.count);
          cutlass::arch::cpasync_barrier_arrive_noinc(full);
        }
        pc.lap(6);
      }
      pc.count(9, n_tiles);
      g += n_tiles;
      if (tid == 0) {
        // Every processed tile takes one value, so the grid takes 0 .. num_tiles - 1 in all;
        // whoever takes the last one resets the counter for the next launch on this slot.
        if (grab == sched.num_tiles - 1) atomicExch(counter, 0);
        sm.next_tile[w & 1] = int(gridDim.x) + grab;
        Barrier::arrive(&sm.bar_tile[w & 1]);
      }
      wt = next_tile(w);
      pc.lap(8);
      // All producer threads have read the word before thread 0 rewrites it two tiles on.
      asm volatile("bar.sync 1, 128;\n" ::: "memory");
    }
    // Keep the producer's copies owned by a live thread until they land.
    asm volatile("cp.async.wait_all;\n" ::: "memory");
  } else {
    // ---------------- consumer warpgroups ----------------
    cutlass::arch::warpgroup_reg_alloc<kConsumerRegs>();
    const int cw = wg - 1;
    const int ctid = tid % 128;
    const int warp = ctid / 32, lane = tid % 32;
    const int row_in_cta0 = cw * Traits::kWgRows + warp * 16 + lane / 4;
    const int col0 = 2 * (lane % 4);

    typename Traits::MmaQK mma_qk;
    typename Traits::MmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(ctid);
    auto thr_pv = mma_pv.get_thread_slice(ctid);
    // Q buffer 0's block of this warpgroup; buffer s is kQElems elements further, i.e. its
    // descriptors start kQElems * sizeof(Element) / 16 units later.
    auto sQ = make_tensor(make_smem_ptr(sm.q + cw * Traits::kQBlockElems),
                          typename Traits::SmemLayoutQ{});
    constexpr int kQBufs = Traits::kQBufs;
    constexpr int kQBufDesc = Traits::kQElems * int(sizeof(Element)) / 16;
    auto sK = make_tensor(make_smem_ptr(sm.k), typename Traits::SmemLayoutKV{});
    auto sVt = make_tensor(make_smem_ptr(sm.v), typename Traits::SmemLayoutVt{});
    auto tSrQ = thr_qk.partition_fragment_A(sQ);
    auto tSrK = thr_qk.partition_fragment_B(sK);
    auto tOrV = thr_pv.partition_fragment_B(sVt);
    auto tOrO = partition_fragment_C(mma_pv, Shape<Int<Traits::kWgRows>, Int<kD>>{});
    auto tSrS = partition_fragment_C(mma_qk, Shape<Int<Traits::kWgRows>, Int<kBlockN>>{});
    auto rP = make_tensor<Element>(typename Traits::LayoutPAsA{});

    // S = Q K^T for K stage s and Q buffer qs into tSrS (issued, committed; the caller waits).
    auto issue_qk = [&](auto& tSrS, int s, int qs) {
      const auto tSrQs = make_tensor(tSrQ.data() + qs * kQBufDesc, tSrQ.layout());
      warpgroup_fence_operand(tSrS);
      warpgroup_arrive();
      mma_qk.accumulate_ = GMMA::ScaleOut::Zero;
      CUTE_UNROLL
      for (int kb = 0; kb < size<2>(tSrQ); ++kb) {
        cute::gemm(mma_qk, tSrQs(_, _, kb), tSrK(_, _, kb, s), tSrS);
        mma_qk.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
    };
    // O += P V for tile in stage s (issued, committed).
    auto issue_pv = [&](auto& rP, int s) {
      warpgroup_fence_operand(tOrO);
      warpgroup_arrive();
      CUTE_UNROLL
      for (int kb = 0; kb < size<2>(rP); ++kb)
        cute::gemm(mma_pv, rP(_, _, kb), tOrV(_, _, kb, s), tOrO);
      warpgroup_commit_batch();
    };
    auto rescale_o = [&](const float(&corr)[2]) {
      // Element a + 2 b + 4 v of the accumulator belongs to row b (see mask_hook.h).
      CUTE_UNROLL
      for (int e = 0; e < size(tOrO); ++e) tOrO(e) *= corr[(e >> 1) & 1];
    };
    auto to_element = [&](auto& rP, const auto& tSrS) {
      CUTE_UNROLL
      for (int e = 0; e < size(tSrS); ++e) rP(e) = Element(tSrS(e));
    };
    auto release = [&](uint64_t* bar) {
      __syncwarp();
      if (lane == 0) Barrier::arrive(bar);
    };
    auto release_all = [&](uint64_t* bar) { Barrier::arrive(bar); };  // every thread arrives

    // Ping-pong (FlashAttention-3): the two warpgroups take turns issuing their GEMMs, so one
    // warpgroup's softmax runs under the other's. Named barrier 4 + cw is warpgroup cw's turn:
    // it waits there (its 128 threads and the other warpgroup's 128 arrivals), issues, and
    // hands the turn over. Both warpgroups walk the same work tiles and KV tiles, so their
    // turns pair up; the last hand-over of the kernel is left pending at exit.
    auto turn_begin = [&] { asm volatile("bar.sync %0, 256;\n" ::"r"(4 + cw) : "memory"); };
    auto turn_end = [&] { asm volatile("bar.arrive %0, 256;\n" ::"r"(5 - cw) : "memory"); };
    if (cw == 1) asm volatile("bar.arrive 4, 256;\n" ::: "memory");  // warpgroup 0 goes first
    PhaseClock pc;
    if constexpr (kPhaseClock) pc.init(sm.prof[wg][ctid / 32], ctid % 32 == 0);
    int g = 0, w = 0;
    // The work tile's coordinates are set up for the next tile before this one's epilogue, and
    // so are the KV iterator and the hook where they come from the parameters alone (dense);
    // SparseK's come from the tile's header once its Q barrier has completed (the first tile's
    // are replaced there too). A grid never gets more CTAs than tiles, so blockIdx.x is a tile.
    TileCoord tc = sched.coord(blockIdx.x);
    auto it = Mode::iterator(params, tc.m_block, tc.batch, tc.head_kv);
    auto hook = Mode::hook(params, tc.m_block, row_in_cta0, tc.batch, tc.head_kv, &sm);
    for (int wt = blockIdx.x; wt < sched.num_tiles; ++w) {
      const int b = tc.batch, h = tc.head, m = tc.m_block;
      clear(tOrO);
      OnlineSoftmax<kBlockN> softmax;
      softmax.scale_log2 = a.scale * 1.4426950408889634f;
      // Mask, online softmax and gate of a finished S (running KV tile gk, its metadata in slot
      // gk % kMetaSlots, released to the producer right after the gate); returns whether O
      // must be rescaled (warp-uniform), by corr per row.
      auto softmax_tile = [&](const KvTile& t, int gk, float(&corr)[2]) -> bool {
        warpgroup_fence_operand(tSrS);
        const int slot = gk % kMetaSlots;
        pc.lap(7);
        if constexpr (kMeta) {
          if (t.gathered || t.mixed) Barrier::wait(&sm.bar_meta_full[slot], (gk / kMetaSlots) & 1);
        }
        pc.lap(4);
        // (Dense: ptxas places the wait for the previous tile's P V, which follows, above this
        // softmax, so the two warpgroups alternate GEMM and softmax phases by themselves.
        // Forcing the softmax under the P V with a branch around it measured 4-6% slower.)
        hook.mask(tSrS, t, slot, col0);
        const bool rescale = softmax.step(tSrS, corr);
        hook.gate(tSrS, t, slot, col0);
        if constexpr (kMeta) release_all(&sm.bar_meta_empty[slot]);
        pc.lap(5);
        return rescale;
      };

      const int qs = w % kQBufs;
      pc.lap(9);
      Barrier::wait(&sm.bar_q[qs], (w / kQBufs) & 1);
      pc.lap(0);
      if constexpr (Mode::kTileHeader) {
        // (The wait's asm has no memory clobber: keep the header's plain loads after it.)
        asm volatile("" ::: "memory");
        it = Mode::header_iterator(params, m, b, tc.head_kv, &sm, qs);
        hook = Mode::header_hook(params, m, row_in_cta0, b, tc.head_kv, &sm, qs);
        pc.lap(13);
      }
      const int n = it.num_tiles;
      pc.count(10, n);
      if (n == 0) {
        // No KV tile: the epilogue writes the rows as empty (l = 0).
      } else {
        // Software pipeline inside the warpgroup: the softmax of tile i runs while the tensor
        // cores do P V of tile i - 1 (FlashAttention-3's intra-warpgroup overlap).
        float corr[2];
        bool rescale = false;  // O must be rescaled by corr before the next P V
        KvTile t = it.tile(0);
        {
          const int s = g % kStages;
          Barrier::wait(&sm.bar_k[s], (g / kStages) & 1);
          pc.lap(1);
          turn_begin();
          issue_qk(tSrS, s, qs);
          turn_end();
          warpgroup_wait<0>();
          pc.lap(3);
          // K is consumed once S is in registers (the hook's metadata has its own ring).
          release(&sm.bar_empty_k[s]);
          softmax_tile(t, g, corr);  // O is still zero: nothing to rescale
          to_element(rP, tSrS);
        }
        for (int i = 1; i < n; ++i) {
          const int gi = g + i, s = gi % kStages, sp = (gi - 1) % kStages;
          t = it.tile(i);
          pc.lap(7);
          Barrier::wait(&sm.bar_k[s], (gi / kStages) & 1);
          pc.lap(1);
          turn_begin();
          issue_qk(tSrS, s, qs);
          // O (P V of tile i - 2 is done) takes tile i - 1's correction while this S = Q K^T
          // runs, not on the path from the softmax to the next GEMMs.
          if (rescale) rescale_o(corr);
          pc.lap(7);
          Barrier::wait(&sm.bar_v[sp], ((gi - 1) / kStages) & 1);
          pc.lap(2);
          issue_pv(rP, sp);
          turn_end();
          pc.lap(7);
          warpgroup_wait<1>();  // S of tile i is ready; P V of tile i - 1 may still run
          pc.lap(3);
          release(&sm.bar_empty_k[s]);
          rescale = softmax_tile(t, gi, corr);
#if BSK_DENSE_PIN_SOFTMAX
          if constexpr (!kMeta) {
            // Without a memory operation that depends on the softmax before the wait below,
            // ptxas sinks the whole softmax under it (after the P V has drained). A store of the
            // row sums to this thread's own word pair of the unused key_u array keeps the
            // softmax between the two waits, under its own P V.
            static_assert(kMetaSlots * kBlockN >= 2 * 256, "key_u holds 2 floats per consumer");
            const uint32_t pin = static_cast<uint32_t>(__cvta_generic_to_shared(&sm.key_u[0][0])) +
                                 8u * static_cast<uint32_t>(ctid + 128 * cw);
            asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(pin), "f"(softmax.row_sum[0]),
                         "f"(softmax.row_sum[1])
                         : "memory");
          }
#endif
          warpgroup_wait<0>();  // P V of tile i - 1 done: O and rP may be touched again
          pc.lap(6);
          warpgroup_fence_operand(tOrO);
          release(&sm.bar_empty_v[sp]);
          to_element(rP, tSrS);
        }
        const int gl = g + n - 1, sl = gl % kStages;
        pc.lap(7);
        Barrier::wait(&sm.bar_v[sl], (gl / kStages) & 1);
        pc.lap(2);
        turn_begin();
        if (rescale) rescale_o(corr);
        issue_pv(rP, sl);
        turn_end();
        warpgroup_wait<0>();
        pc.lap(6);
        warpgroup_fence_operand(tOrO);
        release(&sm.bar_empty_v[sl]);
        g += n;
      }

      float inv[2], lse[2];
      softmax.finish(inv, lse);
      bool nan_row[2] = {hook.row_is_nan(0), hook.row_is_nan(1)};
      pc.lap(8);
      const int wt_next = next_tile(w);
      pc.lap(12);
      // Past the last tile: any valid tile, never used. (The word is read before this tile's
      // Q buffer is released below: after that the producer could run two short tiles ahead
      // and rewrite it.)
      const TileCoord tn = sched.coord(wt_next < sched.num_tiles ? wt_next : wt);
      if constexpr (!Mode::kTileHeader) {  // (nothing below reads this tile's)
        it = Mode::iterator(params, tn.m_block, tn.batch, tn.head_kv);
        hook = Mode::hook(params, tn.m_block, row_in_cta0, tn.batch, tn.head_kv, &sm);
        pc.lap(13);
      }
      Element* ob = static_cast<Element*>(a.o) + b * a.o_stride[0] + h * a.o_stride[2];
      float* lb = a.lse ? a.lse + (int64_t(b) * a.num_heads + h) * a.seqlen_q : nullptr;
      using Epi = StagedEpilogue<Element, kD>;
      static_assert(Epi::kStageCols * Traits::kWgRows == Traits::kStageElems, "stage size");
      // The stage is this warpgroup's block of the tile's Q buffer (its last S = Q K^T is done).
      Element* const stage = sm.q + qs * Traits::kQElems + cw * Traits::kQBlockElems;
      Epi::store(tOrO, inv, lse, nan_row, stage, ob, a.o_stride[1], lb,
                 int64_t(m) * kBlockM + cw * Traits::kWgRows, row_in_cta0 - cw * Traits::kWgRows,
                 a.seqlen_q, ctid, cw, pc);
      // The Q buffer is free for the producer's next load into it once every consumer thread
      // is done with the stage (its generic accesses ordered before that load's async-proxy
      // writes).
      cutlass::arch::fence_view_async_shared();
      release_all(&sm.bar_q_empty[qs]);
      pc.lap(14);
      pc.count(11);
      wt = wt_next;
      tc = tn;
    }
  }
  if constexpr (kPhaseClock) {
#if defined(BSK_ATTN_PROFILE)
    __syncthreads();
    static_assert(sizeof(sm.prof) == sizeof(g_phase_clock[0]), "profile layout");
    if (blockIdx.x < kPhaseMaxCtas)
      for (int i = tid; i < int(sizeof(sm.prof) / sizeof(unsigned)); i += Traits::kThreads)
        (&g_phase_clock[blockIdx.x][0][0][0])[i] = (&sm.prof[0][0][0])[i];
#endif
  }
}

// Host-side launch for one instantiation: one persistent CTA per SM (at most one per work tile).
template <class Traits, template <class> class ModeT>
void launch_attention_fwd(const typename ModeT<Traits>::Params& params,
                          const kernels::AttnFwdParams& a) {
  int64_t total = 0;
  const PersistentTileScheduler sched(a.seqlen_q, Traits::kBlockM, a.num_heads, a.num_heads_kv,
                                      a.batch, &total);
  if (total == 0) return;
  if (total > int64_t(INT32_MAX))
    throw CudaError(
        "attention kernel: more than 2^31 - 1 work tiles (batch * heads * query tiles)");
  // The staged epilogue stores O rows as 16-byte chunks (the API checks the same for every
  // tensor).
  const int64_t e = int64_t(sizeof(typename Traits::Element));
  const bool rows_aligned = reinterpret_cast<uintptr_t>(a.o) % 16 == 0 &&
                            (a.batch <= 1 || a.o_stride[0] * e % 16 == 0) &&
                            (a.seqlen_q <= 1 || a.o_stride[1] * e % 16 == 0) &&
                            (a.num_heads <= 1 || a.o_stride[2] * e % 16 == 0);
  if (!rows_aligned)
    throw CudaError("attention kernel: out must be 16-byte aligned with 16-byte strides");
  int device = 0, num_sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess)
    throw CudaError(std::string("attention kernel: no device: ") + cudaGetErrorString(err));
  // Test hook: BSK_ATTN_MAX_CTAS=N caps the persistent grid, so small problems still run many
  // work tiles per CTA (every ring and phase wraps across work tiles).
  if (const char* cap = std::getenv("BSK_ATTN_MAX_CTAS")) {
    const int n = std::atoi(cap);
    if (n > 0 && n < num_sms) num_sms = n;
  }
  auto kernel = attention_fwd_sm90_kernel<Traits, ModeT>;
  static bool configured = [&] {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes);
    return true;
  }();
  (void)configured;
  // TMA for Q and the whole contiguous K/V tiles when the tensors allow it (they do whenever the
  // API's 16-byte rules hold); cp.async otherwise and for gathered or partial tiles.
  const TmaMaps tma = make_tma_maps(a, Traits::kBlockN, Traits::kWgRows);
  kernel<<<sched.grid(num_sms), Traits::kThreads, Traits::kSmemBytes,
           static_cast<cudaStream_t>(a.stream)>>>(params, sched, next_counter_slot(), tma);
  err = cudaGetLastError();
  if (err != cudaSuccess)
    throw CudaError(std::string("attention kernel launch failed: ") + cudaGetErrorString(err));
#if defined(BSK_ATTN_PROFILE)
  phase_clock_print<<<1, 1, 0, static_cast<cudaStream_t>(a.stream)>>>(sched.grid(num_sms));
#endif
}

}  // namespace bsk::sm90
