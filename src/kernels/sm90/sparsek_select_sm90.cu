// SparseK selection on sm_90a: per query row tau, theta (value, index) and n_active, and the
// per-query-tile union of the selections. The algorithm lives in
// include/bsk/kernels/sm90/sparsek_select_core.h (host-testable); this file is the parallel glue.
//
// One CTA per (batch, kv head):
//   1. load the head's scores (strided), find the first non-finite index and max |u|, and sort
//      the keys by (u, j) descending with cub::BlockRadixSort (stable; keys fed in decreasing j
//      so equal scores come out with the larger index first); store them as 64-bit fixed point;
//   2. cut the computed L range into C cost-balanced chunks (32 per sweeping warp; C = 64 up to
//      2048 keys, 128 up to 16384 (64 at 8192), 256 on the global path; BSK_SELECT_CHUNKS and
//      BSK_SELECT_CHUNKS_BIG override them for experiments) and build the
//      per-chunk prefix table (integer atomics: exact, so deterministic; the suffix / prefix
//      passes are warp-parallel shuffle scans, one warp per table line). From 2049 keys the
//      table lives in the workspace (L2) with 128-rank words; below, in shared memory;
//   3. all threads write the rows that need no computation (n_p <= k, or a non-finite
//      candidate); then lane g of the sweeping warps starts chunk g from scratch (theta from the
//      table, a binary search for the smallest score >= tau);
//   4. the sweeping warps: the lanes tick their chunks down (one bounded step per tick: a cursor
//      move, a row + the next root candidate, or a move and then the row), writing the rows and the
//      last L at which each key is selected (D_j); after a block barrier the chunk starts are
//      patched up (theta's rank at the end of chunk g - 1 passes through shared memory);
//   5. all warps: the per-tile unions, each warp a run of consecutive tiles, each tile a
//      filtered copy of the previous tile's union plus the keys that arrived in between (a
//      warp's first tile: its first row's selection, from the ranks up to its theta).
// The keys are in shared memory up to kMaxSmemN keys (u16 indices). Longer sequences sort with
// cub::DeviceSegmentedRadixSort in the workspace and run the same steps on global memory, a
// batch of heads at a time, with kGlobalLanes chunks per head (every warp sweeps); there the
// loads that do not depend on each other are issued together (a sweep tick otherwise waits for
// dozens of serial round trips to L2 / DRAM).
//
// Performance (H100, seed shape B=16, Hkv=96, S=4096, k=256, window=256, union on).
// Before (one sweeping warp, 32 chunks, wdlog 5): 2.70 ms. Per CTA then (cycles, median): sort
// 71K, table 46K, chunk starts 158K, sweep 1.02M (~378 ticks at ~2.7K cycles: latency-bound),
// unions 43K; 3 CTAs per SM (80 registers, 69 KB shared memory).
// Now (default 64 chunks = 2 sweeping warps, 3 CTAs per SM, so table words of 2^7 ranks):
// 1.85 ms. Grid measured in one run (BSK_SELECT_CHUNKS / BSK_SELECT_CTAS, ms, union on):
//   32/3 2.51 | 64/3 1.85 | 88/3 2.14 | 128/3 1.88 | 256/3 3.71 | 128/2 1.93 | 176/2 2.08 |
//   256/2 2.51 | 128/1 3.23 | 256/1 2.68
// More chunks shorten the sweep, but each chunk is a from-scratch start, and the per-chunk table
// must use coarser words (2^wdlog ranks) to keep 3 CTAs per SM, which makes every table query
// scan more ranks; at 1 CTA per SM nothing hides the sort/table/union latency. Every phase of
// this design is latency-bound (a tick ~2.7K cycles): the 300 us target needs a different
// algorithm, not tuning (see the notes). Since then (H200, 128 chunks at 4096 keys, the table in
// the workspace): 1.83 ms; 1.64 ms with a move and its row step fused into one tick, 1.55 ms with
// the table's suffix loads staged, 1.50 ms with the first union tiles taken from the ranks.
//
// Non-finite scores: a row whose candidates include a NaN/+-inf score gets tau = NaN,
// theta = (NaN, -1), n_active = 0 (when n_p > k; rows with n_p <= k never look at scores) and
// contributes no key to its tile's union (the attention kernel writes a NaN row there anyway).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cub/block/block_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <string>
#include <type_traits>
#if defined(BSK_SELECT_PROFILE)
#include <cstdio>
#include <vector>
#endif

#include "bsk/kernels/sm90/sparsek_select_core.h"
#include "kernels/kernels.h"

namespace bsk::kernels {
namespace {

namespace sc = bsk::select_core;

constexpr int kLanes = 32;      // the parameter structs' default chunk count
constexpr int kMaxLanes = 256;  // chunks per head at most on the shared-memory path
// Chunks per head on the global path: all 8 warps of its CTA sweep. With one sweeping warp (32
// chunks) a 65536-key head was a chain of ~2048 rows per lane at global-memory latency.
constexpr int kGlobalLanes = 256;
constexpr int kDefaultChunks = 64;         // the best of the measured grid below (Sk <= 4096)
constexpr int kDefaultChunksBig = 128;     // Sk in (4096, 16384], capped by smem_chunk_cap
constexpr int kDefaultChunksGTable = 128;  // Sk in (2048, 4096]: the table in global memory
constexpr int kGTableWdlog = 7;            // its words: 128 ranks

#if defined(BSK_SELECT_PROFILE)
// Development aid: per-CTA clock64 at phase boundaries; sparsek_select prints the median cycles
// of each phase over the launch's CTAs to stderr (print_profile). Slots per CTA: 0-5 the phase
// boundaries, 6 warp 0's sweep ticks, 7-10 thread 0 inside the starts phase (after the trivial
// rows, once theta and the bracket are known, after the search for T0, after the partition),
// 11 thread 0's evaluations of f.
constexpr int kProfSlots = 16;
__device__ long long g_sel_prof[4096 * kProfSlots];
#define SEL_PROF_AT(slot, value)                                                    \
  do {                                                                              \
    if (threadIdx.x == 0 && blockIdx.x < 4096)                                      \
      g_sel_prof[blockIdx.x * kProfSlots + (slot)] = static_cast<long long>(value); \
  } while (0)
#define SEL_PROF(slot) SEL_PROF_AT(slot, clock64())
#else
#define SEL_PROF(slot) \
  do {                 \
  } while (0)
#define SEL_PROF_AT(slot, value) \
  do {                           \
  } while (0)
#endif
constexpr int kMaxSmemN = 16384;  // the largest Sk sorted in shared memory
static_assert(kMaxSmemN < 0x7fff, "u16 indices: the alive masks take signs of index - L");
// Radix bits per pass of the shared-memory path's block sort (cub's default 4: 8 passes over the
// 32-bit keys). BSK_SELECT_SORT_BITS=5 (candidate): 7 passes, temporary storage 17.5 instead of
// 16.9 KB at 256 x 16 items, still below the indices; 6 bits would need 33.9 KB.
#if defined(BSK_SELECT_SORT_BITS)
constexpr int kSortBits = BSK_SELECT_SORT_BITS;
#else
constexpr int kSortBits = 4;
#endif
constexpr std::size_t kAlign = 256;       // workspace sub-buffer alignment
constexpr int kSmemPerSm = 233472;        // H100 shared memory per SM (228 KB)
constexpr int kSmemPerBlockMax = 232448;  // opt-in maximum per block (227 KB)

__host__ __device__ constexpr std::size_t align_up(std::size_t x, std::size_t a) {
  return (x + a - 1) / a * a;
}
__host__ __device__ constexpr int64_t min64(int64_t x, int64_t y) {
  return x < y ? x : y;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw CudaError(std::string("sparsek_select: ") + what + ": " + cudaGetErrorString(e));
}

// Kernel arguments (by value).
struct KArgs {
  const float* scores = nullptr;
  int64_t s_b = 0, s_s = 0, s_h = 0;
  int n = 0, sq = 0, hkv = 0;
  int64_t k = 0, window = 0;
  float* tau = nullptr;
  float* theta_val = nullptr;
  int32_t* theta_idx = nullptr;
  int32_t* n_active = nullptr;
  int32_t* union_idx = nullptr;
  int32_t* union_rows = nullptr;
  float* union_u = nullptr;
  int32_t* union_cnt = nullptr;
  int32_t* union_old = nullptr;  // nullable
  int tile_q = 1, n_tiles = 0;
  int64_t union_cap = 0;
  int wdlog = 5;
  int nchunks = kLanes;  // sweeping lanes (chunks) per head; ceil(nchunks / 32) warps sweep
  // Shared-memory layout (bytes from the start of the dynamic buffer).
  uint32_t off_idx = 0, off_pos = 0, off_region = 0, off_ubuf = 0, off_sort = 0;
  int ubuf_in_smem = 0;
  // Global mode: the batch [bh0, bh0 + gridDim.x) and its buffers.
  int bh0 = 0;
  uint32_t* g_keys = nullptr;  // sorted keys of the batch, converted in place to float bits
  const int32_t* g_vals = nullptr;
  char* g_scratch = nullptr;  // per head: pos[n], d[n], table counts, table sums
  std::size_t g_scratch_stride = 0;
  std::size_t g_off_d = 0, g_off_tcnt = 0, g_off_tsum = 0;
  int g_vec = 1;    // DevKeys::vec on the global path (BSK_SELECT_GLOBAL_VEC=0: scalar loads)
  int g_scan = 16;  // the global path's union scans: rows of 32 keys per round of loads
  // Shared-memory path with the chunk table in global memory (SmemPlan::gtable): head bh's
  // table at t_cnt / t_sum + bh * t_stride entries.
  int32_t* t_cnt = nullptr;
  int64_t* t_sum = nullptr;
  int64_t t_stride = 0;
};

// Sorted keys as the core reads them. Shared-memory path (IdxT = u16): the fixed values are
// stored (val64), and a float value is rebuilt from its fixed value when exact, else re-read from
// the scores (u + j * s_s). Global path (IdxT = int32): float values, converted on access.
// kCall: the table queries' range_stats as one out-of-line function (sc::stats_call). The
// shared-memory path moves tick's cursors by selects (sc::cursor_select; slower on the global
// path).
template <class IdxT, bool kCall>
struct DevKeys {
  static constexpr bool kStatsCall = kCall;
  static constexpr bool kCursorSelect = sizeof(IdxT) == 2;
  int n;
  const int64_t* val64;
  const float* val;
  const IdxT* ix;
  const IdxT* ps;
  sc::Fixed fx;
  const float* u;
  int64_t s_s;
  // Global path, when every head's segment is 16-byte aligned (Sk % 4 == 0): the alive masks of
  // whole 32-rank words come from 128-bit loads.
  bool vec = false;
  __device__ __forceinline__ int64_t v(int r) const {
    if constexpr (sizeof(IdxT) == 2)
      return val64[r];
    else
      return sc::to_fixed(val[r], fx);
  }
  __device__ __forceinline__ int idx(int r) const { return static_cast<int>(ix[r]); }
  __device__ __forceinline__ int pos(int j) const { return static_cast<int>(ps[j]); }
  __device__ __forceinline__ float fval(int r) const {
    if constexpr (sizeof(IdxT) == 2) {
      float f;
      if (sc::fixed_to_float_exact(val64[r], fx, f)) return f;
      return u[static_cast<int64_t>(ix[r]) * s_s];
    } else {
      return val[r];
    }
  }
  // Bit b: rank 32 w + b (< n) holds a key with idx < L. u16 indices: 4 vector loads, halfword
  // subtractions whose sign bits are the answer (indices < 2^15), gathered a byte at a time
  // (sc::below_mask_u16: ~43 instructions against ~79 for shifting each sign into place; select
  // kernel at the seed shape on an H200 1492 -> 1397 us, at S = 16384 1961 -> 1920 us).
  __device__ __forceinline__ uint32_t alive_mask(int w, int L) const {
    uint32_t m = 0;
    if constexpr (sizeof(IdxT) == 2) {
      const uint4* q = reinterpret_cast<const uint4*>(ix + (w << 5));
      uint32_t h[16];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint4 x = q[i];
        h[4 * i] = x.x;
        h[4 * i + 1] = x.y;
        h[4 * i + 2] = x.z;
        h[4 * i + 3] = x.w;
      }
      // The padding ranks [n, 32 ceil(n / 32)) hold index 0x7fff > L (written after the sort):
      // never alive, so no mask for the last word.
      return sc::below_mask_u16(h, static_cast<uint32_t>(L));
    } else {
      const int base = w << 5;
      if (vec && base + 32 <= n) {
        // Eight 128-bit loads instead of 32 scalar ones: the sweep's ticks on this path are
        // bound by the memory pipeline's request rate, not by the round trip alone.
        const int4* q = reinterpret_cast<const int4*>(ix + base);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int4 x = q[i];
          const uint32_t bits =
              (x.x < L ? 1u : 0u) | (x.y < L ? 2u : 0u) | (x.z < L ? 4u : 0u) | (x.w < L ? 8u : 0u);
          m |= bits << (4 * i);
        }
      } else {
        // 32 unconditional loads at clamped ranks (the padding bits are masked below), all in
        // flight at once. Guarded loads compiled to one branch per rank, i.e. 32 dependent
        // global-memory round trips per mask.
#pragma unroll
        for (int b = 0; b < 32; ++b) {
          const int r = base + b < n ? base + b : n - 1;
          m |= (ix[r] < L ? 1u : 0u) << b;
        }
      }
    }
    const int rem = n - (w << 5);  // callers keep 32 w < n; the padding is masked out
    if (rem < 32) m &= (1u << rem) - 1u;
    return m;
  }
};

__device__ __forceinline__ void add_count(uint16_t* cnt, int e, uint32_t v) {
  // Counts stay below 2^16 (<= n <= kMaxSmemN), so a 32-bit add never carries into the neighbour.
  uint32_t* w = reinterpret_cast<uint32_t*>(reinterpret_cast<uintptr_t>(cnt + e) & ~uintptr_t{3});
  atomicAdd(w, v << (((reinterpret_cast<uintptr_t>(cnt + e) >> 1) & 1u) * 16u));
}
__device__ __forceinline__ void add_count(int32_t* cnt, int e, uint32_t v) {
  atomicAdd(cnt + e, static_cast<int32_t>(v));
}

__device__ __forceinline__ void write_row(const KArgs& a, int bh, int64_t i, const sc::RowOut& o) {
  const int64_t at = static_cast<int64_t>(bh) * a.sq + i;
  a.tau[at] = o.tau;
  a.theta_val[at] = o.theta_val;
  a.theta_idx[at] = o.theta_idx;
  a.n_active[at] = o.n_active;
}

// The suffix over chunks: one thread per word column walking the chunks serially, so that a warp's
// loads of one chunk row are contiguous. With a warp per column, as scan_lines does the words, the
// lanes read entries a table row apart: that pass was 572 K of the global path's 1.61 M table
// cycles at S = 65536; the table phase is 1.31 M with this one and the cubic cut.
template <class CntT>
__device__ void suffix_columns(CntT* cnt, int64_t* sum, int ncols, int nrows, int tid,
                               int nthreads) {
  for (int w = tid; w < ncols; w += nthreads) {
    int c = 0;
    int64_t s = 0;
    // kStage rows loaded before any of them is stored: the compiler cannot move a load above a
    // store to an array that may alias it, so a plain loop is one round trip to the table (L2
    // on the workspace paths) per chunk row. Seed shape on an H200: the table phase 137 K ->
    // 79 K cycles per CTA, the select kernel -5%; 4 rows per stage did as well there.
    constexpr int kStage = 8;
    for (int r1 = nrows; r1 > 0; r1 -= kStage) {
      int cv[kStage];
      int64_t sv[kStage];
#pragma unroll
      for (int i = 0; i < kStage; ++i) {
        const int r = r1 - 1 - i;
        cv[i] = r >= 0 ? static_cast<int>(cnt[r * ncols + w]) : 0;
        sv[i] = r >= 0 ? sum[r * ncols + w] : 0;
      }
#pragma unroll
      for (int i = 0; i < kStage; ++i) {
        const int r = r1 - 1 - i;
        c += cv[i];
        s += sv[i];
        if (r >= 0) {
          cnt[r * ncols + w] = static_cast<CntT>(c);
          sum[r * ncols + w] = s;
        }
      }
    }
  }
}

// Inclusive scans of the table lines: line l has `len` entries at l * lstride + i * estride,
// scanned in order of increasing i. One warp per line.
template <class CntT>
__device__ __noinline__ void scan_lines(CntT* cnt, int64_t* sum, int nlines, int len, int lstride,
                                        int estride, int warp, int nwarps, int lane) {
  const int per = (len + 31) >> 5;
  const int q0 = min(lane * per, len), q1 = min(q0 + per, len);
  int l = warp;
  // Lines of at most 32 entries (one per lane) kLines at a time, their loads issued before any
  // store (see suffix_columns).
  if (len <= 32) {
    constexpr int kLines = 4;
    for (; l < nlines; l += kLines * nwarps) {
      int cv[kLines];
      int64_t sv[kLines];
#pragma unroll
      for (int i = 0; i < kLines; ++i) {
        const int li = l + i * nwarps;
        const bool ok = li < nlines && lane < len;
        cv[i] = ok ? static_cast<int>(cnt[li * lstride + lane * estride]) : 0;
        sv[i] = ok ? sum[li * lstride + lane * estride] : 0;
      }
#pragma unroll
      for (int i = 0; i < kLines; ++i) {
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
          const int tc = __shfl_up_sync(0xffffffffu, cv[i], off);
          const int64_t ts = __shfl_up_sync(0xffffffffu, sv[i], off);
          if (lane >= off) {
            cv[i] += tc;
            sv[i] += ts;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kLines; ++i) {
        const int li = l + i * nwarps;
        if (li < nlines && lane < len) {
          cnt[li * lstride + lane * estride] = static_cast<CntT>(cv[i]);
          sum[li * lstride + lane * estride] = sv[i];
        }
      }
    }
    return;
  }
  for (; l < nlines; l += nwarps) {
    auto at = [&](int q) { return l * lstride + q * estride; };
    int ac = 0;
    int64_t as = 0;
    for (int q = q0; q < q1; ++q) {
      ac += static_cast<int>(cnt[at(q)]);
      as += sum[at(q)];
    }
    int ic = ac;
    int64_t is = as;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int tc = __shfl_up_sync(0xffffffffu, ic, off);
      const int64_t ts = __shfl_up_sync(0xffffffffu, is, off);
      if (lane >= off) {
        ic += tc;
        is += ts;
      }
    }
    int pc = ic - ac;
    int64_t ps = is - as;
    for (int q = q0; q < q1; ++q) {
      pc += static_cast<int>(cnt[at(q)]);
      ps += sum[at(q)];
      cnt[at(q)] = static_cast<CntT>(pc);
      sum[at(q)] = ps;
    }
  }
}

// Steps 2-5 for one head, given its sorted keys. tcnt/tsum (the table), d (D_j) and ubuf (union
// buffers, nullable) may alias each other: they are used in separate phases.
template <class IdxT, bool kCall, class CntT>
__device__ void select_head(const KArgs& a, int bh, const DevKeys<IdxT, kCall>& keys, int fnf,
                            CntT* tcnt, int64_t* tsum, IdxT* d, int32_t* ubuf, int64_t* bound,
                            int* th_end_s) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const int n = a.n;
  const int64_t k = a.k;
  const sc::RowPlan plan = sc::make_plan(n, a.sq, k, a.window, fnf);  // its default chunk cut
  const sc::Fixed& fx = keys.fx;
  const int wdlog = a.wdlog;
  const int tw = ((n + (1 << wdlog) - 1) >> wdlog) - 1;  // table entries per chunk
  const int nc = sc::chunks_used(plan, a.nchunks);
  const int swarps = (a.nchunks + 31) >> 5;  // warps that sweep
  const bool want_union = a.union_idx != nullptr;

  SEL_PROF(1);
  // --- 2. Chunk bounds (cost-balanced), then the table: entry (c, w - 1) = alive count / fixed
  //        sum of ranks [0, w << wdlog) at L = bound[c]. Built as per-(chunk, word) deltas, a
  //        suffix sum over chunks (a key alive at chunk c's start is alive at every earlier
  //        chunk's) and a prefix over words. Integer atomics: exact, so deterministic.
  if (tid > 0 && tid < nc) bound[tid] = sc::chunk_bound_raw(plan, nc, tid);
  for (int e = tid; e < nc * tw; e += blockDim.x) {
    tcnt[e] = 0;
    tsum[e] = 0;
  }
  __syncthreads();
  if (tid == 0) sc::chunk_bounds_fix(plan, nc, a.nchunks, bound);
  __syncthreads();
  if (nc > 0 && tw > 0) {
    for (int r = tid; r < n; r += blockDim.x) {
      const int wr = r >> wdlog;
      if (wr >= tw) continue;
      const int m = sc::alive_chunks(bound, nc, keys.idx(r));
      if (m == 0) continue;
      const int e = (m - 1) * tw + wr;
      add_count(tcnt, e, 1u);
      atomicAdd(reinterpret_cast<unsigned long long*>(tsum + e),
                static_cast<unsigned long long>(keys.v(r)));
    }
    __syncthreads();
    // Suffix over chunks (a thread per word column), then prefix over words (a warp per chunk:
    // lane-serial runs + a shuffle scan, so long lines cost no serial chain).
    suffix_columns(tcnt, tsum, tw, nc, tid, static_cast<int>(blockDim.x));
    __syncthreads();
    scan_lines(tcnt, tsum, nc, tw, tw, 1, warp, nwarps, lane);
    __syncthreads();
  }

  SEL_PROF(2);
  // --- 3. Rows that need no computation (all threads), then the chunk starts (lane g of the
  //        sweeping warps starts chunk g).
  for (int64_t i = tid; i < a.sq; i += blockDim.x) {
    const int kind = sc::row_kind(plan, plan.row_L(i));
    if (kind == 0) write_row(a, bh, i, sc::trivial_row());
    if (kind == 1) write_row(a, bh, i, sc::nan_row());
  }
  SEL_PROF(7);
  for (int slot = 8; slot < 12; ++slot) SEL_PROF_AT(slot, 0);  // stays 0 unless thread 0 starts
  sc::Lane ln;                                                 // done unless started
  int th_start = -1;
  const int g = tid;  // chunk index of this lane
  const bool active = warp < swarps && g < nc;
  if (active) {
    sc::TableRow<CntT> row;
    row.cnt = tcnt + g * tw;
    row.sum = tsum + g * tw;
    row.wdlog = wdlog;
    row.nw = tw + 1;
    // T0 by regula falsi in [theta's rank, start_bad_bound): the same state as init_lane's
    // bisection, in ~7 instead of ~12 evaluations of f at the seed shape. The profile build
    // counts them and clocks the stages.
#if defined(BSK_SELECT_PROFILE)
    int evals = 0;
    int* const count = &evals;
    auto mark = [](int i) { SEL_PROF(8 + i); };
#else
    int* const count = nullptr;
    const sc::NoMark mark;
#endif
    sc::init_lane_falsi(keys, row, static_cast<int>(bound[g]), static_cast<int>(bound[g + 1]) + 1,
                        k, fx.one, ln, count, mark);
    SEL_PROF(10);
    SEL_PROF_AT(11, evals);
    th_start = ln.st.th.p;
  }
  __syncthreads();  // the table is dead from here on (d and ubuf may alias it)
  SEL_PROF(3);

  if (want_union) {
    for (int j = tid; j < n; j += blockDim.x) d[j] = static_cast<IdxT>(sc::initial_d(plan, j));
    __syncthreads();
  }

  // Warp 0, after the sweeps: every key selected at the top computed row hi0 (theta at rank th0
  // there) is selected up to it.
  auto mark_top = [&](int th0, int hi0) {
    for (int r = lane; r <= th0; r += 32) {
      const int j = keys.idx(r);
      if (j < hi0) d[j] = static_cast<IdxT>(hi0);
    }
  };
  // --- 4. Sweeps: the lanes tick until every chunk of their warp is done (one bounded step per
  //        tick, so the lanes of a warp stay together).
  if (warp < swarps) {
    auto emit = [&](int L, const sc::RowOut& o) { write_row(a, bh, L - plan.lbase, o); };
    auto on_select = [&](int r, int L) {
      if (want_union) d[keys.idx(r)] = static_cast<IdxT>(L);
    };
#if defined(BSK_SELECT_PROFILE)
    int iters = 0;
#endif
    while (__any_sync(0xffffffffu, !ln.done)) {
      if (!ln.done) sc::tick(keys, ln, k, fx, emit, on_select);
#if defined(BSK_SELECT_PROFILE)
      ++iters;
#endif
    }
#if defined(BSK_SELECT_PROFILE)
    if (lane == 0 && warp == 0) SEL_PROF_AT(6, iters);
#endif
    if (want_union && active) th_end_s[g] = ln.st.th.p;
  }
  __syncthreads();
  if (want_union && k > 0 && nc > 0) {
    // Keys that enter the selection exactly at a chunk start: theta moved from the end of
    // chunk g - 1 (L = bound[g] + 1) to the start of chunk g.
    if (active && g > 0)
      sc::mark_selected(keys, static_cast<int>(bound[g]), th_end_s[g - 1] + 1, th_start,
                        [&](int j, int l) { d[j] = static_cast<IdxT>(l); });
    // Chunk 0 starts at the top computed row.
    if (warp == 0) mark_top(__shfl_sync(0xffffffffu, th_start, 0), static_cast<int>(bound[0]));
  }
  __syncthreads();
  SEL_PROF(4);
  if (!want_union) return;

  // --- 5. Unions. Warp w handles tiles [t0, t1); tile t = the keys of tile t - 1 still selected
  //        somewhere in t, then the keys j in [Lb(t-1), Lb(t)) selected somewhere in t.
  const int64_t cap = a.union_cap;
  // Per union key j: n_j and u_j (0 where not finite), which the attention kernel's mask and
  // gate read. Key j is selected exactly for L in [j + 1, D_j], and L(i) grows with the row, so
  // the tile's rows with L <= D_j are a prefix 0 .. n_j - 1 of its rows; among the rows where j
  // is a candidate (L >= j + 1, which the attention kernel tests itself) they are the rows that
  // select j. Needs tile_q == kRowsPerTile.
  constexpr int kRowsPerTile = 128;
  // Union steps per loop iteration: 1 in shared memory; 4 on the global path, whose loads are
  // round trips to L2 or DRAM.
  constexpr int kBatch = sizeof(IdxT) == 2 ? 1 : 4;
  const bool want_rows = a.union_rows != nullptr && a.tile_q == kRowsPerTile;
  const float* ub = a.scores + static_cast<int64_t>(bh / a.hkv) * a.s_b +
                    static_cast<int64_t>(bh % a.hkv) * a.s_h;
  const int t0 = static_cast<int>(static_cast<int64_t>(warp) * a.n_tiles / nwarps);
  const int t1 = static_cast<int>(static_cast<int64_t>(warp + 1) * a.n_tiles / nwarps);
  int32_t* buf = ubuf != nullptr ? ubuf + static_cast<int64_t>(warp) * cap : nullptr;
  int cnt = 0;
  int64_t prev_lb = 0;
  for (int t = t0; t < t1; ++t) {
    const int64_t la = plan.row_L(static_cast<int64_t>(t) * a.tile_q);
    const int64_t lb = plan.row_L(min64(a.sq, static_cast<int64_t>(t + 1) * a.tile_q) - 1);
    const int64_t tile_at = (static_cast<int64_t>(bh) * a.n_tiles + t) * cap;
    int32_t* out = a.union_idx + tile_at;
    // n_j = the tile's rows with L(i) <= D_j: sc::union_rows, written out here (calling it
    // changes ptxas' allocation for the whole kernel, and that build has not been measured).
    const int64_t row_off = plan.lbase + static_cast<int64_t>(t) * a.tile_q;
    int newcnt = 0, oldcnt = 0;  // oldcnt: emitted keys j < la (candidates of the first row)
    // Union entry `at` (< cap) of the tile: key j, and its n_j and u_j.
    auto store_key = [&](int at, int j, int64_t dj) {
      out[at] = j;
      if (buf) buf[at] = j;
      if (want_rows) {
        // Shared-memory path: the sorted keys' exact value (no global load) for keys below the
        // first non-finite score; the scores themselves otherwise.
        float uj;
        if constexpr (sizeof(IdxT) == 2)
          uj = j < plan.fnf ? keys.fval(keys.pos(j)) : ub[static_cast<int64_t>(j) * a.s_s];
        else
          uj = ub[static_cast<int64_t>(j) * a.s_s];
        const int64_t nr = dj - row_off + 1;
        a.union_rows[tile_at + at] =
            static_cast<int32_t>(nr < 0 ? 0 : (nr > kRowsPerTile ? kRowsPerTile : nr));
        a.union_u[tile_at + at] = isfinite(uj) ? uj : 0.f;
      }
    };
    auto emit = [&](bool pred, int j, int64_t dj) {
      const unsigned m = __ballot_sync(0xffffffffu, pred);
      oldcnt += __popc(__ballot_sync(0xffffffffu, pred && j < la));
      const int at = newcnt + __popc(m & ((1u << lane) - 1u));
      if (pred && at < cap) store_key(at, j, dj);
      newcnt += __popc(m);
    };
    int64_t jstart = 0;
    if constexpr (kBatch == 1) {
      // A warp's first tile takes its old keys (j < la: exactly the keys its first row selects,
      // the alive keys at ranks <= theta(la)) from the ranks instead of scanning every key below
      // la, when theta's rank is below la: at the seed shape ~300 ranks instead of up to ~3700
      // keys. They are marked in a bitmap over j (in the warp's union buffer, above the <= k
      // entries the old keys take) and emitted from it in index order. H200, seed shape: the
      // union phase 91 K -> 58 K cycles per CTA (its last warp's first tile was the longest
      // scan), the select kernel -3.5%.
      if (t == t0 && buf != nullptr && k > 0 && sc::row_kind(plan, la) == 2) {
        const int ti = __ldcg(a.theta_idx + static_cast<int64_t>(bh) * a.sq +
                              static_cast<int64_t>(t) * a.tile_q);
        const int nw = static_cast<int>((la + 31) >> 5);
        const int th = ti >= 0 ? keys.pos(ti) : n;
        if (th + 1 < la && nw <= cap - k) {
          uint32_t* bm = reinterpret_cast<uint32_t*>(buf + (cap - nw));
          for (int w = lane; w < nw; w += 32) bm[w] = 0u;
          __syncwarp();
          for (int r0 = 0; r0 <= th; r0 += 32) {
            const int r = r0 + lane;
            if (r <= th) {
              const int j = keys.idx(r);
              if (j < la && sc::in_union(static_cast<int64_t>(d[j]), j, la, lb))
                atomicOr(bm + (j >> 5), 1u << (j & 31));
            }
          }
          __syncwarp();
          for (int w0 = 0; w0 < nw; w0 += 32) {
            const int w = w0 + lane;
            uint32_t bits = w < nw ? bm[w] : 0u;
            const int c = __popc(bits);
            int incl = c;
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
              const int tc = __shfl_up_sync(0xffffffffu, incl, off);
              if (lane >= off) incl += tc;
            }
            const int total = __shfl_sync(0xffffffffu, incl, 31);
            int at = newcnt + incl - c;
            while (bits != 0u) {
              const int j = (w << 5) + __ffs(static_cast<int>(bits)) - 1;
              bits &= bits - 1u;
              if (at < cap) store_key(at, j, static_cast<int64_t>(d[j]));
              ++at;
            }
            newcnt += total;
            oldcnt += total;
          }
          __syncwarp();  // the bitmap is read; the new keys may be stored over it
          jstart = la;
        }
      }
      if (t > t0) {
        const int32_t* prev = buf ? buf : out - cap;
        for (int base = 0; base < cnt; base += 32) {
          const int i = base + lane;
          int j = -1;
          if (i < cnt) j = buf ? prev[i] : __ldcg(prev + i);
          const int64_t dj = i < cnt ? static_cast<int64_t>(d[j]) : 0;
          __syncwarp();  // the filtered copy writes where other lanes of the warp just read
          emit(i < cnt && sc::in_union(dj, j, la, lb), j, dj);
        }
        jstart = prev_lb;
      }
      for (int64_t base = jstart; base < lb; base += 32) {
        const int j = static_cast<int>(base) + lane;
        const int64_t dj = static_cast<int64_t>(d[j < lb ? j : 0]);
        emit(j < lb && sc::in_union(dj, j, la, lb), j, dj);
      }
    } else {
      // Global path (no union buffer: the previous tile is read back from the output, which
      // never overlaps this tile's): kBatch rows of 32 keys per step, their loads issued
      // before any of their stores.
      if (t > t0) {
        const int32_t* prev = out - cap;
        for (int base = 0; base < cnt; base += 32 * kBatch) {
          int jv[kBatch];
          int64_t dv[kBatch];
#pragma unroll
          for (int q = 0; q < kBatch; ++q) {
            const int i = base + 32 * q + lane;
            jv[q] = __ldcg(prev + (i < cnt ? i : 0));
          }
#pragma unroll
          for (int q = 0; q < kBatch; ++q) dv[q] = static_cast<int64_t>(d[jv[q]]);
#pragma unroll
          for (int q = 0; q < kBatch; ++q) {
            const bool in = base + 32 * q + lane < cnt;
            emit(in && sc::in_union(dv[q], jv[q], la, lb), jv[q], dv[q]);
          }
        }
        jstart = prev_lb;
      }
      // The new keys: 128 per tile, but a warp's first tile scans every key below it (up to Sk
      // of them), there in rounds of a.g_scan rows.
      auto scan_new = [&](auto rows) {
        constexpr int kRows = decltype(rows)::value;
        for (int64_t base = jstart; base < lb; base += 32 * kRows) {
          int64_t dv[kRows];
#pragma unroll
          for (int q = 0; q < kRows; ++q) {
            const int64_t j = base + 32 * q + lane;
            dv[q] = static_cast<int64_t>(d[j < lb ? j : 0]);
          }
#pragma unroll
          for (int q = 0; q < kRows; ++q) {
            const int j = static_cast<int>(base) + 32 * q + lane;
            emit(j < lb && sc::in_union(dv[q], j, la, lb), j, dv[q]);
          }
        }
      };
      if (a.g_scan > kBatch && lb - jstart > 32 * kBatch)
        scan_new(std::integral_constant<int, 16>{});
      else
        scan_new(std::integral_constant<int, kBatch>{});
    }
    if (lane == 0) {
      a.union_cnt[static_cast<int64_t>(bh) * a.n_tiles + t] = newcnt;
      if (a.union_old) a.union_old[static_cast<int64_t>(bh) * a.n_tiles + t] = oldcnt;
    }
    cnt = newcnt < cap ? newcnt : static_cast<int>(cap);
    prev_lb = lb;
    __syncwarp();
  }
  __syncthreads();
  SEL_PROF(5);
}

// ---------------------------------------------------------------------------------------------
// Shared-memory path.
// ---------------------------------------------------------------------------------------------
// Chunks per head at most, per instantiation: 256 up to 4096 keys; 64 for 8192 (two CTAs per
// SM leave ~1 KB for the static arrays below) and 128 for 16384 (one CTA per SM) and for the
// 128-thread instantiations (Sk <= 1024).
__host__ __device__ constexpr int smem_chunk_cap(int threads, int items) {
  return (threads == 256 && items <= 16) ? kMaxLanes : (threads == 256 ? 64 : 128);
}
// Static shared memory of select_smem_kernel with chunk cap c (s_bound, s_thend, two words).
constexpr std::size_t smem_static_bytes(int c) {
  return 8 * static_cast<std::size_t>(c + 1) + 4 * static_cast<std::size_t>(c) + 16;
}

template <int kThreads, int kItems, int kMinBlocks, bool kGTable>
__global__ void __launch_bounds__(kThreads, kMinBlocks) select_smem_kernel(const KArgs a) {
  using Sort = cub::BlockRadixSort<uint32_t, kThreads, kItems, uint16_t, kSortBits>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int s_fnf;
  __shared__ unsigned s_maxabs;
  // The most chunks per head (smem_chunk_cap: the larger instantiations' static arrays must
  // leave their dynamic shared memory room).
  constexpr int kCap = smem_chunk_cap(kThreads, kItems);
  __shared__ int64_t s_bound[kCap + 1];
  __shared__ int s_thend[kCap];
  float* val = reinterpret_cast<float*>(smem);  // raw scores until the sort, then fixed values
  int64_t* val64 = reinterpret_cast<int64_t*>(smem);
  uint16_t* ix = reinterpret_cast<uint16_t*>(smem + a.off_idx);
  uint16_t* ps = reinterpret_cast<uint16_t*>(smem + a.off_pos);
  unsigned char* region = smem + a.off_region;

  const int tid = threadIdx.x;
  const int bh = blockIdx.x;
  const int b = bh / a.hkv, h = bh % a.hkv;
  const int n = a.n;
  const float* u = a.scores + b * a.s_b + h * a.s_h;

  // --- 1. Load (coalesced when the head stride is 1), statistics, sort.
  SEL_PROF(0);
  if (tid == 0) {
    s_fnf = n;
    s_maxabs = 0;
  }
  __syncthreads();
  int fnf = n;
  unsigned maxabs = 0;
#pragma unroll 4
  for (int j = tid; j < n; j += kThreads) {
    const float x = u[j * a.s_s];
    const uint32_t bits = sc::float_bits(x);
    if (sc::finite_bits(bits))
      maxabs = max(maxabs, bits & 0x7fffffffu);
    else
      fnf = min(fnf, j);
    val[j] = x;
  }
  atomicMin(&s_fnf, fnf);
  atomicMax(&s_maxabs, maxabs);
  __syncthreads();
  uint32_t key[kItems];
  uint16_t jj[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int q = tid * kItems + i;  // blocked input order: decreasing j, so ties keep larger j
    const int j = n - 1 - q;
    key[i] = q < n ? sc::sort_key(val[j]) : 0u;  // padding sorts last
    jj[i] = static_cast<uint16_t>(q < n ? j : 0);
  }
  __syncthreads();  // every raw score is in registers: the sort may reuse their space
  Sort(*reinterpret_cast<typename Sort::TempStorage*>(smem + a.off_sort)).SortDescending(key, jj);
  __syncthreads();
  const sc::Fixed fx = sc::make_fixed(s_maxabs, n);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int r = tid * kItems + i;
    if (r < n) {
      val64[r] = sc::to_fixed(sc::key_value(key[i]), fx);
      ix[r] = jj[i];
      ps[jj[i]] = static_cast<uint16_t>(r);
    }
  }
  // Padding ranks up to the last whole alive-mask word: an index no L reaches (L <= n <= 2^14).
  for (int r = n + tid; r < ((n + 31) & ~31); r += kThreads) ix[r] = 0x7fff;
  __syncthreads();

  // range_stats out of line where three or more CTAs share an SM (sc::stats_call).
  DevKeys<uint16_t, (kMinBlocks >= 3)> keys{n, val64, nullptr, ix, ps, fx, u, a.s_s};
  const int tw = ((n + (1 << a.wdlog) - 1) >> a.wdlog) - 1;
  uint16_t* d = reinterpret_cast<uint16_t*>(region);
  int32_t* ubuf = a.ubuf_in_smem ? reinterpret_cast<int32_t*>(smem + a.off_ubuf) : nullptr;
  if constexpr (kGTable) {
    select_head(a, bh, keys, s_fnf, a.t_cnt + bh * a.t_stride, a.t_sum + bh * a.t_stride, d, ubuf,
                s_bound, s_thend);
  } else {
    uint16_t* tcnt = reinterpret_cast<uint16_t*>(region);
    int64_t* tsum =
        reinterpret_cast<int64_t*>(region + align_up(sizeof(uint16_t) * a.nchunks * tw, 16));
    select_head(a, bh, keys, s_fnf, tcnt, tsum, d, ubuf, s_bound, s_thend);
  }
}

// ---------------------------------------------------------------------------------------------
// Global path (Sk > kMaxSmemN): keys sorted by cub::DeviceSegmentedRadixSort beforehand.
// ---------------------------------------------------------------------------------------------
__global__ void prep_sort_kernel(const KArgs a, uint32_t* keys, int32_t* vals, int* offsets,
                                 int nheads) {
  const int g = blockIdx.y;
  const int bh = a.bh0 + g;
  const int b = bh / a.hkv, h = bh % a.hkv;
  const int n = a.n;
  const int q = blockIdx.x * blockDim.x + threadIdx.x;
  if (q < n) {
    const int j = n - 1 - q;  // decreasing j: the stable sort keeps the larger index first
    const float x = a.scores[b * a.s_b + static_cast<int64_t>(j) * a.s_s + h * a.s_h];
    keys[static_cast<int64_t>(g) * n + q] = sc::sort_key(x);
    vals[static_cast<int64_t>(g) * n + q] = j;
  }
  if (g == 0 && blockIdx.x == 0)
    for (int i = threadIdx.x; i <= nheads; i += blockDim.x) offsets[i] = i * n;
}

__global__ void __launch_bounds__(256, 2) select_global_kernel(const KArgs a) {
  __shared__ int s_fnf;
  __shared__ unsigned s_maxabs;
  __shared__ int64_t s_bound[kGlobalLanes + 1];
  __shared__ int s_thend[kGlobalLanes];
  const int tid = threadIdx.x;
  const int g = blockIdx.x;
  const int bh = a.bh0 + g;
  const int b = bh / a.hkv, h = bh % a.hkv;
  const int n = a.n;
  uint32_t* kbits = a.g_keys + static_cast<int64_t>(g) * n;
  const int32_t* ix = a.g_vals + static_cast<int64_t>(g) * n;
  SEL_PROF(0);
  char* scratch = a.g_scratch + g * a.g_scratch_stride;
  int32_t* ps = reinterpret_cast<int32_t*>(scratch);
  if (tid == 0) {
    s_fnf = n;
    s_maxabs = 0;
  }
  __syncthreads();
  int fnf = n;
  unsigned maxabs = 0;
  const float* u = a.scores + b * a.s_b + h * a.s_h;
#pragma unroll 4
  for (int j = tid; j < n; j += blockDim.x) {
    const uint32_t bits = sc::float_bits(u[static_cast<int64_t>(j) * a.s_s]);
    if (sc::finite_bits(bits))
      maxabs = max(maxabs, bits & 0x7fffffffu);
    else
      fnf = min(fnf, j);
  }
  // Four ranks per thread and step, their loads ahead of their stores (ps could alias ix).
  for (int r0 = tid; r0 < n; r0 += 4 * blockDim.x) {
    uint32_t kb[4];
    int32_t jx[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int r = r0 + q * static_cast<int>(blockDim.x);
      kb[q] = r < n ? kbits[r] : 0u;
      jx[q] = r < n ? ix[r] : 0;
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int r = r0 + q * static_cast<int>(blockDim.x);
      if (r < n) {
        kbits[r] = sc::float_bits(sc::key_value(kb[q]));
        ps[jx[q]] = r;
      }
    }
  }
  atomicMin(&s_fnf, fnf);
  atomicMax(&s_maxabs, maxabs);
  __syncthreads();
  DevKeys<int32_t, true> keys{n,  nullptr, reinterpret_cast<const float*>(kbits),
                              ix, ps,      sc::make_fixed(s_maxabs, n),
                              u,  a.s_s};
  keys.vec = a.g_vec != 0 && (n & 3) == 0;  // the workspace's segments start 16-byte aligned
  select_head(a, bh, keys, s_fnf, reinterpret_cast<int32_t*>(scratch + a.g_off_tcnt),
              reinterpret_cast<int64_t*>(scratch + a.g_off_tsum),
              reinterpret_cast<int32_t*>(scratch + a.g_off_d), nullptr, s_bound, s_thend);
}

// ---------------------------------------------------------------------------------------------
// Host side.
// ---------------------------------------------------------------------------------------------
struct SmemPlan {
  int threads = 0, items = 0;
  int wdlog = 5;
  int nchunks = kLanes;
  uint32_t off_idx = 0, off_pos = 0, off_region = 0, off_ubuf = 0, off_sort = 0;
  std::size_t bytes = 0;
  bool ubuf_in_smem = false;
  // 2049..16384 keys: the chunk table in the workspace (L2) instead of shared memory, so that it
  // keeps 128-rank words and 128 chunks at the occupancy target (docs/kernel_notes.md, v34).
  bool gtable = false;
  std::size_t table_stride = 0;   // entries per head
  std::size_t off_table_sum = 0;  // workspace: heads x int32 counts, then from here int64 sums
  std::size_t workspace = 0;      // bytes
};

std::size_t sort_temp_bytes(int threads, int items);

int table_words(int n, int wdlog) {
  return ((n + (1 << wdlog) - 1) >> wdlog) - 1;
}

std::size_t table_bytes(int n, int wdlog, std::size_t cnt_size, int chunks) {
  const std::size_t tw = static_cast<std::size_t>(std::max(table_words(n, wdlog), 0));
  const std::size_t c = static_cast<std::size_t>(chunks);
  return align_up(cnt_size * c * tw, 16) + sizeof(int64_t) * c * tw;
}

// Development knobs (read once): BSK_SELECT_CHUNKS (sweeping lanes per head, up to 256, for
// Sk <= 4096), BSK_SELECT_CTAS (the CTAs per SM the shared memory plan targets: 1..3),
// BSK_SELECT_WDLOG (the smallest table word to try), BSK_SELECT_GLOBAL_CHUNKS (lanes per head on
// the global path, up to 256), BSK_SELECT_SMEM_MAX_N (the longest Sk kept on the
// shared-memory path, at most kMaxSmemN), BSK_SELECT_SMALL (0: 256-thread CTAs for Sk <= 1024
// as well), BSK_SELECT_GTABLE (0: the chunk table in shared memory for 2049..16384 keys too),
// BSK_SELECT_GTABLE_WDLOG (its word size in the workspace, default 7), BSK_SELECT_GLOBAL_VEC (0:
// the global path's alive masks from scalar loads) and BSK_SELECT_GLOBAL_SCAN (4: its first
// union tiles in rounds of 4 rows).
int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != 0 ? std::atoi(v) : dflt;
}

// Chooses the instantiation, the table word size and the layout, or returns false when the
// keys do not fit in shared memory.
bool plan_smem(const SelectParams& p, SmemPlan& sp) {
  const int64_t n = p.seqlen_k;
  static const int env_max_n = env_int("BSK_SELECT_SMEM_MAX_N", kMaxSmemN);
  if (n > std::min(env_max_n, kMaxSmemN)) return false;
  // Up to 1024 keys: 128-thread CTAs, six per SM. Every phase of a head is latency-bound and only
  // two warps sweep, so twice the heads in flight per SM beat twice the threads per head (the
  // tier-origin shape, B16 Hkv96 S512: 509 -> 354 us on an H200). BSK_SELECT_SMALL=0 keeps 256.
  static const bool env_small = env_int("BSK_SELECT_SMALL", 1) != 0;
  bool small = false;
  if (n <= 1024 && env_small) {
    sp.threads = 128, sp.items = n <= 512 ? 4 : 8;
    small = true;
  } else if (n <= 1024) {
    sp.threads = 256, sp.items = 4;
  } else if (n <= 2048) {
    sp.threads = 256, sp.items = 8;
  } else if (n <= 4096) {
    sp.threads = 256, sp.items = 16;
  } else if (n <= 8192) {
    sp.threads = 256, sp.items = 32;
  } else {
    sp.threads = 512, sp.items = 32;
  }
  // Occupancy target (registers allow 3 CTAs of 256 threads): 3 per SM up to 4096 keys, then 2, 1.
  static const int env_ctas = env_int("BSK_SELECT_CTAS", 3);
  const int ctas = small ? 6 : std::max(1, std::min(env_ctas, n <= 4096 ? 3 : (n <= 8192 ? 2 : 1)));
  const int cap = smem_chunk_cap(sp.threads, sp.items);
  const std::size_t stat = smem_static_bytes(cap);  // 1 KB per CTA is the system's
  const std::size_t budget =
      std::min<std::size_t>(kSmemPerSm / ctas - 1024 - stat, kSmemPerBlockMax - stat);
  const std::size_t np = align_up(static_cast<std::size_t>(n), 32);  // whole alive-mask words
  sp.off_idx = static_cast<uint32_t>(np * 8);                        // int64 fixed values first
  sp.off_pos = static_cast<uint32_t>(np * 10);
  sp.off_region = static_cast<uint32_t>(np * 12);
  // The sort's temporary storage goes behind the raw scores (which sit in registers during the
  // sort) when it fits below the indices, else into the region.
  const std::size_t sort_b = sort_temp_bytes(sp.threads, sp.items);
  const bool sort_low = align_up(np * 4, 128) + sort_b <= sp.off_region;
  sp.off_sort = sort_low ? static_cast<uint32_t>(align_up(np * 4, 128)) : sp.off_region;
  const std::size_t d_b = align_up(np * 2, 16);
  static const bool env_gtable = env_int("BSK_SELECT_GTABLE", 1) != 0;
  sp.gtable = env_gtable && sp.items >= 16;
  static const int env_chunks = env_int("BSK_SELECT_CHUNKS", kDefaultChunks);
  static const int env_chunks_g = env_int("BSK_SELECT_CHUNKS", kDefaultChunksGTable);
  static const int env_chunks_big = env_int("BSK_SELECT_CHUNKS_BIG", kDefaultChunksBig);
  static const int env_wdlog = env_int("BSK_SELECT_WDLOG", 5);
  static const int env_wdlog_g = env_int("BSK_SELECT_GTABLE_WDLOG", kGTableWdlog);
  sp.nchunks = std::min(
      std::max(n <= 4096 ? (sp.gtable ? env_chunks_g : env_chunks) : env_chunks_big, 1), cap);
  if (sp.gtable) {
    sp.wdlog = std::min(std::max(env_wdlog_g, 5), 14);
    const std::size_t tw = static_cast<std::size_t>(std::max(table_words(int(n), sp.wdlog), 0));
    sp.table_stride = tw * static_cast<std::size_t>(sp.nchunks);
    const std::size_t heads =
        static_cast<std::size_t>(std::max<int64_t>(p.batch * p.num_heads_kv, 0));
    sp.off_table_sum = align_up(heads * sp.table_stride * 4, kAlign);
    sp.workspace = sp.off_table_sum + heads * sp.table_stride * 8;
  }
  auto bytes_for = [&](int wdlog) {
    return sp.off_region + std::max({sort_low ? std::size_t{0} : sort_b,
                                     table_bytes(static_cast<int>(n), wdlog, 2, sp.nchunks), d_b});
  };
  if (sp.gtable) {
    sp.bytes = sp.off_region + std::max(sort_low ? std::size_t{0} : sort_b, d_b);
  } else {
    // The smallest table word (fastest queries) that meets the occupancy target.
    sp.wdlog = std::min(std::max(env_wdlog, 5), 14);
    while (sp.wdlog < 14 && bytes_for(sp.wdlog) > budget) ++sp.wdlog;
    sp.bytes = bytes_for(sp.wdlog);
  }
  if (sp.bytes > kSmemPerBlockMax - stat) return false;
  // Union buffers (one tile's list per warp) after D when they fit in the budget; otherwise the
  // previous tile is read back from the output.
  const std::size_t ub = static_cast<std::size_t>(sp.threads / 32) *
                         static_cast<std::size_t>(std::max<int64_t>(p.union_cap, 0)) * 4;
  sp.off_ubuf = static_cast<uint32_t>(sp.off_region + d_b);
  sp.ubuf_in_smem = false;
  if (p.union_idx != nullptr && sp.off_ubuf + ub <= budget) {
    sp.ubuf_in_smem = true;
    sp.bytes = std::max<std::size_t>(sp.bytes, sp.off_ubuf + ub);
  }
  return true;
}

template <int kThreads, int kItems>
std::size_t sort_bytes_of() {
  return sizeof(
      typename cub::BlockRadixSort<uint32_t, kThreads, kItems, uint16_t, kSortBits>::TempStorage);
}
std::size_t sort_temp_bytes(int threads, int items) {
  if (threads == 128 && items == 4) return sort_bytes_of<128, 4>();
  if (threads == 128 && items == 8) return sort_bytes_of<128, 8>();
  if (threads == 256 && items == 4) return sort_bytes_of<256, 4>();
  if (threads == 256 && items == 8) return sort_bytes_of<256, 8>();
  if (threads == 256 && items == 16) return sort_bytes_of<256, 16>();
  if (threads == 256 && items == 32) return sort_bytes_of<256, 32>();
  return sort_bytes_of<512, 32>();
}

KArgs base_args(const SelectParams& p) {
  KArgs a;
  a.scores = p.scores;
  a.s_b = p.score_stride[0];
  a.s_s = p.score_stride[1];
  a.s_h = p.score_stride[2];
  a.n = static_cast<int>(p.seqlen_k);
  a.sq = static_cast<int>(p.seqlen_q);
  a.hkv = static_cast<int>(p.num_heads_kv);
  a.k = p.k_select;
  a.window = p.window;
  a.tau = p.tau;
  a.theta_val = p.theta_val;
  a.theta_idx = p.theta_idx;
  a.n_active = p.n_active;
  a.union_idx = p.union_idx;
  a.union_rows = p.union_rows;
  a.union_u = p.union_u;
  a.union_cnt = p.union_cnt;
  a.union_old = p.union_old;
  a.tile_q = std::max(p.tile_q, 1);
  a.n_tiles = static_cast<int>((p.seqlen_q + a.tile_q - 1) / a.tile_q);
  a.union_cap = p.union_cap;
  return a;
}

template <int kThreads, int kItems, int kMinBlocks, bool kGTable = false>
void launch_smem(const KArgs& a, const SmemPlan& sp, int64_t heads, cudaStream_t stream) {
  auto kern = select_smem_kernel<kThreads, kItems, kMinBlocks, kGTable>;
  check(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(sp.bytes)),
        "cudaFuncSetAttribute(max dynamic shared memory)");
  kern<<<static_cast<unsigned>(heads), kThreads, sp.bytes, stream>>>(a);
  check(cudaGetLastError(), "select kernel launch");
}

// Global path layout for a batch of g heads.
struct GlobalPlan {
  int batch = 0;  // heads per batch
  int wdlog = 6;
  int nchunks = kGlobalLanes;
  std::size_t off_keys_a = 0, off_keys_b = 0, off_vals_a = 0, off_vals_b = 0, off_offsets = 0;
  std::size_t off_cub = 0, cub_bytes = 0, off_scratch = 0, scratch_stride = 0;
  std::size_t d_off = 0, tcnt_off = 0, tsum_off = 0;
  std::size_t total = 0;
};

GlobalPlan plan_global(const SelectParams& p) {
  GlobalPlan gp;
  const int64_t n = p.seqlen_k;
  const int64_t heads = p.batch * p.num_heads_kv;
  // Enough heads per batch to fill the GPU, few enough to bound the workspace and cub's int
  // item count.
  const int64_t max_by_items = (int64_t{1} << 31) / 2 / std::max<int64_t>(n, 1);
  gp.batch = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({heads, 512, max_by_items})));
  gp.wdlog = std::max(6, sc::bit_width64(static_cast<uint64_t>(n)) - 9);  // ~512 table words
  static const int env_chunks = env_int("BSK_SELECT_GLOBAL_CHUNKS", kGlobalLanes);
  gp.nchunks = std::min(std::max(env_chunks, 1), kGlobalLanes);
  const std::size_t items = static_cast<std::size_t>(gp.batch) * static_cast<std::size_t>(n);
  std::size_t pos = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t at = pos;
    pos = align_up(pos + bytes, kAlign);
    return at;
  };
  gp.off_keys_a = take(items * 4);
  gp.off_keys_b = take(items * 4);
  gp.off_vals_a = take(items * 4);
  gp.off_vals_b = take(items * 4);
  gp.off_offsets = take((static_cast<std::size_t>(gp.batch) + 1) * 4);
  cub::DoubleBuffer<uint32_t> dk(nullptr, nullptr);
  cub::DoubleBuffer<int32_t> dv(nullptr, nullptr);
  gp.cub_bytes = 0;
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(
            nullptr, gp.cub_bytes, dk, dv, static_cast<int>(items), gp.batch,
            static_cast<const int*>(nullptr), static_cast<const int*>(nullptr), 0, 32),
        "DeviceSegmentedRadixSort temp size");
  gp.off_cub = take(gp.cub_bytes);
  // Per head: pos[n], d[n], table (int32 counts, int64 sums).
  gp.d_off = align_up(static_cast<std::size_t>(n) * 4, kAlign);
  gp.tcnt_off = gp.d_off + align_up(static_cast<std::size_t>(n) * 4, kAlign);
  const std::size_t tw =
      static_cast<std::size_t>(std::max(table_words(static_cast<int>(n), gp.wdlog), 0));
  const std::size_t chunks = static_cast<std::size_t>(gp.nchunks);
  gp.tsum_off = gp.tcnt_off + align_up(4 * chunks * tw, kAlign);
  gp.scratch_stride = gp.tsum_off + align_up(8 * chunks * tw + 8, kAlign);
  gp.off_scratch = take(gp.scratch_stride * static_cast<std::size_t>(gp.batch));
  gp.total = pos;
  return gp;
}

#if defined(BSK_SELECT_PROFILE)
// Development aid: median cycles per phase over the first CTAs of the last launch (stderr).
void print_profile(int ctas, cudaStream_t stream) {
  static long long h[4096 * kProfSlots];
  ctas = std::min(ctas, 4096);
  cudaStreamSynchronize(stream);
  if (cudaMemcpyFromSymbol(h, g_sel_prof, sizeof(long long) * kProfSlots * ctas) != cudaSuccess)
    return;
  auto median = [&](auto&& value) {  // over the CTAs
    std::vector<long long> d(ctas);
    for (int c = 0; c < ctas; ++c) d[c] = value(h + c * kProfSlots);
    std::sort(d.begin(), d.end());
    return d[ctas / 2];
  };
  const char* names[5] = {"load+sort", "table", "starts", "sweep+patch", "unions"};
  std::fprintf(stderr, "[select profile] %d CTAs, median cycles:", ctas);
  for (int ph = 0; ph < 5; ++ph)
    std::fprintf(stderr, " %s %lld", names[ph],
                 median([&](const long long* x) { return x[ph + 1] - x[ph]; }));
  std::fprintf(stderr, " | sweep ticks (warp 0) %lld\n",
               median([](const long long* x) { return x[6]; }));
  // Thread 0 inside the starts phase (0 where its chunk is not computed).
  std::fprintf(stderr,
               "[select profile] starts phase, thread 0: trivial rows %lld, theta + bracket %lld, "
               "search %lld (%lld evaluations of f), partition %lld, barrier wait %lld\n",
               median([](const long long* x) { return x[7] - x[2]; }),
               median([](const long long* x) { return x[8] ? x[8] - x[7] : 0; }),
               median([](const long long* x) { return x[9] ? x[9] - x[8] : 0; }),
               median([](const long long* x) { return x[11]; }),
               median([](const long long* x) { return x[10] ? x[10] - x[9] : 0; }),
               median([](const long long* x) { return x[10] ? x[3] - x[10] : 0; }));
}
#endif

// The caller's workspace; required whenever select_workspace_bytes(p) > 0.
char* workspace_of(const SelectParams& p) {
  if (p.workspace == nullptr)
    throw CudaError("sparsek_select: Sk = " + std::to_string(p.seqlen_k) +
                    " needs a workspace of select_workspace_bytes() bytes, got none");
  return static_cast<char*>(p.workspace);
}
}  // namespace

std::size_t select_workspace_bytes(const SelectParams& p) {
  if (p.batch <= 0 || p.num_heads_kv <= 0 || p.seqlen_q <= 0 || p.seqlen_k <= 0) return 0;
  SmemPlan sp;
  if (plan_smem(p, sp)) return sp.gtable ? sp.workspace : 0;
  return plan_global(p).total;
}

void sparsek_select(const SelectParams& p) {
  if (p.batch <= 0 || p.num_heads_kv <= 0 || p.seqlen_q <= 0 || p.seqlen_k <= 0) return;
  if (p.seqlen_k >= (int64_t{1} << 30))
    throw NotImplemented("sparsek_select: sequences of 2^30 keys or more are not supported");
  auto stream = static_cast<cudaStream_t>(p.stream);
  const int64_t heads = p.batch * p.num_heads_kv;
  KArgs a = base_args(p);
  SmemPlan sp;
  if (plan_smem(p, sp)) {
    a.wdlog = sp.wdlog;
    a.nchunks = sp.nchunks;
    a.off_idx = sp.off_idx;
    a.off_pos = sp.off_pos;
    a.off_region = sp.off_region;
    a.off_ubuf = sp.off_ubuf;
    a.off_sort = sp.off_sort;
    a.ubuf_in_smem = sp.ubuf_in_smem ? 1 : 0;
    if (sp.threads == 128 && sp.items == 4) {
      launch_smem<128, 4, 6>(a, sp, heads, stream);
    } else if (sp.threads == 128) {
      launch_smem<128, 8, 6>(a, sp, heads, stream);
    } else if (sp.items == 4) {
      launch_smem<256, 4, 3>(a, sp, heads, stream);
    } else if (sp.items == 8) {
      launch_smem<256, 8, 3>(a, sp, heads, stream);
    } else if (sp.gtable) {
      char* ws = workspace_of(p);
      a.t_cnt = reinterpret_cast<int32_t*>(ws);
      a.t_sum = reinterpret_cast<int64_t*>(ws + sp.off_table_sum);
      a.t_stride = static_cast<int64_t>(sp.table_stride);
      if (sp.items == 16)
        launch_smem<256, 16, 3, true>(a, sp, heads, stream);
      else if (sp.threads == 256)
        launch_smem<256, 32, 2, true>(a, sp, heads, stream);
      else
        launch_smem<512, 32, 1, true>(a, sp, heads, stream);
    } else if (sp.items == 16) {
      launch_smem<256, 16, 3>(a, sp, heads, stream);
    } else if (sp.threads == 256) {
      launch_smem<256, 32, 2>(a, sp, heads, stream);
    } else {
      launch_smem<512, 32, 1>(a, sp, heads, stream);
    }
#if defined(BSK_SELECT_PROFILE)
    print_profile(static_cast<int>(heads), stream);
#endif
    return;
  }
  char* ws = workspace_of(p);
  const GlobalPlan gp = plan_global(p);
  a.wdlog = gp.wdlog;
  a.nchunks = gp.nchunks;
  const int n = a.n;
  for (int64_t bh0 = 0; bh0 < heads; bh0 += gp.batch) {
    const int g = static_cast<int>(std::min<int64_t>(gp.batch, heads - bh0));
    a.bh0 = static_cast<int>(bh0);
    auto* keys_a = reinterpret_cast<uint32_t*>(ws + gp.off_keys_a);
    auto* keys_b = reinterpret_cast<uint32_t*>(ws + gp.off_keys_b);
    auto* vals_a = reinterpret_cast<int32_t*>(ws + gp.off_vals_a);
    auto* vals_b = reinterpret_cast<int32_t*>(ws + gp.off_vals_b);
    auto* offsets = reinterpret_cast<int*>(ws + gp.off_offsets);
    dim3 grid(static_cast<unsigned>((n + 255) / 256), static_cast<unsigned>(g));
    prep_sort_kernel<<<grid, 256, 0, stream>>>(a, keys_a, vals_a, offsets, g);
    check(cudaGetLastError(), "prep kernel launch");
    cub::DoubleBuffer<uint32_t> dk(keys_a, keys_b);
    cub::DoubleBuffer<int32_t> dv(vals_a, vals_b);
    std::size_t cub_bytes = gp.cub_bytes;
    check(cub::DeviceSegmentedRadixSort::SortPairsDescending(
              ws + gp.off_cub, cub_bytes, dk, dv, g * n, g, offsets, offsets + 1, 0, 32, stream),
          "DeviceSegmentedRadixSort");
    a.g_keys = dk.Current();
    a.g_vals = dv.Current();
    a.g_scratch = ws + gp.off_scratch;
    a.g_scratch_stride = gp.scratch_stride;
    a.g_off_d = gp.d_off;
    a.g_off_tcnt = gp.tcnt_off;
    a.g_off_tsum = gp.tsum_off;
    static const int env_vec = env_int("BSK_SELECT_GLOBAL_VEC", 1);
    static const int env_scan = env_int("BSK_SELECT_GLOBAL_SCAN", 16);
    a.g_vec = env_vec;
    a.g_scan = env_scan == 4 ? 4 : 16;
    select_global_kernel<<<static_cast<unsigned>(g), 256, 0, stream>>>(a);
    check(cudaGetLastError(), "select kernel launch (global path)");
#if defined(BSK_SELECT_PROFILE)
    print_profile(g, stream);
#endif
  }
}

}  // namespace bsk::kernels
