// SparseK selection: the sequential, per-(batch, kv-head) algorithm pieces, shared by the sm_90a
// kernel (src/kernels/sm90/sparsek_select_sm90.cu) and the CPU unit tests
// (tests/cpp/test_select_core.cpp). Everything here is __host__ __device__ and allocation-free;
// the kernel only adds the parallel glue (load, block sort, table build, output stores).
//
// Problem (SPEC section 1). For one (b, hkv) with n = Sk keys and scores u_0..u_{n-1}, every query
// row is a prefix length L (its candidates are the keys j < L). For L > k we need
//   tau(L)   = the smallest t with f_L(t) = sum_{j<L} clip(u_j - t, 0, 1) <= k,
//   theta(L) = the k-th largest (u_j, j) among j < L,
//   n_active(L) = #{ j < L : tau < u_j < tau + 1 }.
//
// Approach.
//  * Sort all n keys once by (u, j) descending ("rank" order). The candidate set of L is the set of
//    "alive" keys idx < L, so one sorted order serves every L.
//  * Sweep L downwards. Removing the newest key can only lower tau, so every boundary below only
//    moves towards larger ranks: a sweep from L_hi down to L_lo is amortised O(1) per row.
//      p1: alive keys at ranks < p1 are saturated (u >= T + 1), at ranks >= p1 u < T + 1.
//      p2: alive keys at ranks < p2 have u > T, at ranks >= p2 u <= T.
//      p3: alive keys at ranks < p3 have u >= T, at ranks >= p3 u < T.
//      th: the rank of theta (the k-th alive key).
//    with the alive counts ns (sat), na (strictly active), ne (u == T exactly) and the sum sa of
//    the active keys. n_active = na; keys exactly at T (possible with ties) are kept apart in
//    [p2, p3) because they are not active at T but become active as soon as T moves down. The
//    cursors visit alive keys only (32-rank alive masks), and equal scores move as one group.
//  * The sweep is a flat state machine (tick): one bounded piece of work per call, so the 32
//    lanes of a warp, each sweeping its own chunk of rows, stay in step.
//  * Each chunk starts from scratch (init_lane_falsi): theta and prefix statistics Q(R) = (#alive
//    keys at ranks < R, their sum) come from a small per-chunk table (table_q, table_select); a
//    search over ranks (regula falsi on f; init_lane bisects, to the same state) finds the
//    smallest score T0 >= tau, the partition at T0 is set up exactly, and the ticks walk the last
//    breakpoints down to tau.
//  * Exact arithmetic. Scores are converted to 64-bit fixed point (Fixed: u * 2^s truncated, s
//    chosen per head from max|u| and n so that every product and sum below fits in int64), so
//    sums are exact and independent of the order keys enter or leave, comparisons against
//    T = N / (D * 2^s) are exact integer comparisons, and a T that lands exactly on a score (ties)
//    is recognised exactly. tau is rounded to float only at the output.
//  * Per-tile union: Sel_L = the alive keys at ranks <= th(L). Because th(L) is non-increasing in
//    L, key j is selected on one contiguous L interval [j + 1, D_j]; the sweep records D_j (the
//    largest L at which j is selected) when theta first reaches it, and a tile's union is
//    { j : j + 1 <= Lb and D_j >= max(j + 1, La) } for its L range [La, Lb] (in_union).
//
// Non-finite scores: with f = the first index whose score is NaN/+-inf, rows with L > max(k, f)
// are NaN rows (tau = NaN, theta = (NaN, -1), n_active = 0) and select nothing for the union.
// Keys at index >= f are never alive in a computed row, so their (sanitised) sort key is
// irrelevant.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define BSK_SEL_HD __host__ __device__ __forceinline__
#else
#define BSK_SEL_HD inline
#endif

namespace bsk::select_core {

// ---------------------------------------------------------------------------------------------
// Float helpers.
// ---------------------------------------------------------------------------------------------
BSK_SEL_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

BSK_SEL_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

BSK_SEL_HD bool finite_bits(uint32_t b) {
  return ((b >> 23) & 0xffu) != 0xffu;
}

// Order-preserving unsigned key of a score. -0 is canonicalised to +0 (equal values must tie so
// that the index breaks the tie, as the reference does); non-finite scores map to the key of +0
// (such keys are never alive in a computed row).
BSK_SEL_HD uint32_t sort_key(float x) {
  uint32_t b = float_bits(x);
  if (!finite_bits(b) || (b << 1) == 0u) b = 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Inverse of sort_key (for finite, canonical values).
BSK_SEL_HD float key_value(uint32_t key) {
  return bits_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

BSK_SEL_HD int bit_width64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return 64 - __clzll(static_cast<long long>(x));
#else
  return x == 0 ? 0 : 64 - __builtin_clzll(x);
#endif
}

// ---------------------------------------------------------------------------------------------
// Fixed point. value_fixed = trunc(u * 2^shift). With nb = bit_width(n) (so every count is
// < 2^nb) and |u| < 2^E, shift = 60 - nb - E gives |v| < 2^(60-nb), |v * count| < 2^60,
// one * count <= 2^60, and every expression below stays under 2^63. Scores beyond that range
// (|u| >= 2^(60 - nb), i.e. ~1e14 for n = 4096) saturate: such inputs lose accuracy, never crash.
// Resolution: 2^-shift, e.g. 2^-44 for n = 4096 and |u| < 8.
// ---------------------------------------------------------------------------------------------
struct Fixed {
  int shift = 0;
  int64_t one = 1;     // 2^shift: the fixed-point value of 1.0
  int64_t vmax = 0;    // saturation bound 2^(60 - nb) - 1
  double scale = 1.0;  // 2^shift
  double inv = 1.0;    // 2^-shift
};

// max_abs_bits: the largest (bits & 0x7fffffff) over the finite scores (0 if none).
BSK_SEL_HD Fixed make_fixed(uint32_t max_abs_bits, int64_t n) {
  Fixed f;
  const int nb = bit_width64(static_cast<uint64_t>(n < 1 ? 1 : n));
  const int e = static_cast<int>((max_abs_bits >> 23) & 0xffu);
  int big_e = e - 126;  // |u| < 2^(e - 126) for a normal number with exponent field e
  if (big_e < 0) big_e = 0;
  int s = 60 - nb - big_e;
  if (s < 0) s = 0;
  f.shift = s;
  f.one = int64_t{1} << s;
  f.vmax = (int64_t{1} << (60 - nb)) - 1;
  f.scale = static_cast<double>(f.one);
  f.inv = 1.0 / f.scale;
  return f;
}

// trunc(u * 2^shift), saturated to +-vmax. On the device this is the fp64 path (exact: the
// product is a float times a power of two, well inside double range, and __double2ll_rz
// truncates); on the host the equivalent bit decoding (no dependence on denormal flushing:
// subnormal floats are < 2^-126 and give 0 either way since shift <= 60).
BSK_SEL_HD int64_t to_fixed(float u, const Fixed& fx) {
#if defined(__CUDA_ARCH__)
  long long v = __double2ll_rz(static_cast<double>(u) * fx.scale);
  v = v > fx.vmax ? fx.vmax : v;
  v = v < -fx.vmax ? -fx.vmax : v;
  return v;
#else
  const uint32_t b = float_bits(u);
  const int e = static_cast<int>((b >> 23) & 0xffu);
  if (e == 0) return 0;
  const int64_t m = static_cast<int64_t>((b & 0x7fffffu) | 0x800000u);
  const int sh = e - 150 + fx.shift;  // value = m * 2^sh
  int64_t v;
  if (sh >= 0)
    v = sh >= 40 ? fx.vmax : (m << sh);
  else
    v = sh <= -24 ? 0 : (m >> -sh);
  if (v > fx.vmax) v = fx.vmax;
  return (b & 0x80000000u) ? -v : v;
#endif
}

// The float whose fixed value is v when that is unambiguous (|v| >= 2^24: no bit was truncated,
// and not saturated); false otherwise (the caller then reads the original score).
BSK_SEL_HD bool fixed_to_float_exact(int64_t v, const Fixed& fx, float& out) {
  const int64_t a = v < 0 ? -v : v;
  if (a < (int64_t{1} << 24) || a >= fx.vmax) return false;
  out = static_cast<float>(static_cast<double>(v) * fx.inv);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Row plan: which L each query row has, which rows are trivial / NaN / computed, and the chunks
// of the computed L range. Row i has L(i) = max(0, lbase + i).
// ---------------------------------------------------------------------------------------------
constexpr int kMaxChunks = 32;

struct RowPlan {
  int64_t n = 0, sq = 0, k = 0, window = 0;
  int64_t lbase = 0;  // L(i) = max(0, lbase + i)
  int64_t lrow_min = 0, lrow_max = 0;
  int64_t fnf = 0;           // first non-finite score index (n if none)
  int cost_weight = 6;       // the chunk cut's cost model (chunk_cost): 6 k ln L with the cubic
  bool cost_cubic = true;    // log2 (the kernel's); the simulator and tests also try 4, linear
  int64_t llo = 1, lhi = 0;  // computed rows: L in [llo, lhi] (empty when llo > lhi)
  int64_t ltriv = 0;         // the largest L <= k among the rows (0 if none)

  BSK_SEL_HD int64_t row_L(int64_t i) const {
    const int64_t l = lbase + i;
    return l < 0 ? 0 : l;
  }
  BSK_SEL_HD int64_t computed_rows() const { return lhi >= llo ? lhi - llo + 1 : 0; }
};

BSK_SEL_HD RowPlan make_plan(int64_t n, int64_t sq, int64_t k, int64_t window, int64_t fnf) {
  RowPlan p;
  p.n = n;
  p.sq = sq;
  p.k = k;
  p.window = window;
  p.fnf = fnf;
  p.lbase = window > 0 ? n - sq - window + 1 : n - sq + 1;
  p.lrow_min = p.row_L(0);
  p.lrow_max = p.row_L(sq - 1);
  p.llo = p.lrow_min > k + 1 ? p.lrow_min : k + 1;
  p.lhi = p.lrow_max < fnf ? p.lrow_max : fnf;
  p.ltriv = p.lrow_min <= k ? (p.lrow_max < k ? p.lrow_max : k) : 0;
  return p;
}

// Chunk c (one GPU lane) covers L in (bound[c + 1], bound[c]]; bound[0] = lhi, bound[C] = llo - 1,
// strictly decreasing while rows remain, so the non-empty chunks are a prefix. The cut balances
// an estimated sweep cost per row, 1 + w k / L (each boundary crosses about k / L keys per row),
// i.e. cumulative cost(L) = L + w k ln L, in Q16 integers so that host and device cut identically.
// ln comes from log2: interpolated linearly within each octave (its cost density is off by up to
// 2x inside an octave), or with cubic: log2(1 + f) on each octave by a cubic (max error 1e-3).
// The cubic log with w = 6 (RowPlan's default, the kernel's cut) makes the slowest chunk, which
// the sweep waits for, 13-23% shorter than the linear one with w = 4 from 16384 keys on the sweep
// simulator (tools/select_sweep_sim.cpp); on an H200 the sweep phase at S = 65536 fell by 15%
// (docs/kernel_notes.md, eighth and ninth sessions).
BSK_SEL_HD int64_t chunk_cost(int64_t l, int64_t k, int64_t weight, bool cubic) {
  if (l < 1) l = 1;
  const int e = bit_width64(static_cast<uint64_t>(l)) - 1;  // 2^e <= l < 2^(e+1)
  const int64_t f = ((l - (int64_t{1} << e)) << 16) >> e;   // (l - 2^e) / 2^e in Q16
  int64_t t = f;                                            // log2(1 + f) ~ f
  if (cubic) {                                              // ~ f (a + f (b + c f)), a + b + c = 1
    t = (10249 * f) >> 16;
    t = ((-37831 + t) * f) >> 16;
    t = ((93118 + t) * f) >> 16;
  }
  const int64_t log2_q16 = (static_cast<int64_t>(e) << 16) + t;
  return (l << 16) + weight * k * ((log2_q16 * 45426) >> 16);  // ln 2 * 2^16 ~ 45426
}

// Number of non-empty chunks for `chunks` lanes.
BSK_SEL_HD int chunks_used(const RowPlan& p, int chunks) {
  const int64_t rows = p.computed_rows();
  return rows < chunks ? static_cast<int>(rows) : chunks;
}

// bound[c] for 0 < c < used, before the monotone clean-up (independent per c: one GPU thread each).
BSK_SEL_HD int64_t chunk_bound_raw(const RowPlan& p, int used, int c) {
  const int64_t ca = chunk_cost(p.llo - 1, p.k, p.cost_weight, p.cost_cubic);
  const int64_t cb = chunk_cost(p.lhi, p.k, p.cost_weight, p.cost_cubic);
  const int64_t target = cb - static_cast<int64_t>(static_cast<double>(cb - ca) * c / used);
  int64_t lo = p.llo - 1, hi = p.lhi;  // the smallest l with cost(l) >= target
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (chunk_cost(mid, p.k, p.cost_weight, p.cost_cubic) < target)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Makes bound[0..used] strictly decreasing with bound[0] = lhi, bound[used] = llo - 1.
BSK_SEL_HD void chunk_bounds_fix(const RowPlan& p, int used, int chunks, int64_t* bound) {
  bound[0] = p.lhi;
  for (int c = 1; c < used; ++c) {
    const int64_t max_x = bound[c - 1] - 1, min_x = p.llo - 1 + (used - c);
    if (bound[c] > max_x) bound[c] = max_x;
    if (bound[c] < min_x) bound[c] = min_x;
  }
  for (int c = used; c <= chunks; ++c) bound[c] = p.llo - 1;
}

BSK_SEL_HD int chunk_bounds(const RowPlan& p, int chunks, int64_t* bound) {
  const int used = chunks_used(p, chunks);
  for (int c = 1; c < used; ++c) bound[c] = chunk_bound_raw(p, used, c);
  chunk_bounds_fix(p, used, chunks, bound);
  return used;
}

// Number of chunks whose start L (bound[c]) has key idx alive: #{c < used : bound[c] > idx}.
BSK_SEL_HD int alive_chunks(const int64_t* bound, int used, int64_t idx) {
  int lo = 0, hi = used;  // bound[] is decreasing: the first c with bound[c] <= idx
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (bound[mid] > idx)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// ---------------------------------------------------------------------------------------------
// Sorted keys. The algorithm reads the keys through an accessor K with
//   int n; int64_t v(int r) (fixed value at rank r); int idx(int r); int pos(int j) (rank of j);
//   float fval(int r) (float value at rank r);
//   uint32_t alive_mask(int w, int L): bit b set iff rank 32 w + b < n holds a key with idx < L.
// Ranks are in (u, j) descending order: rank 0 is the largest.
// ---------------------------------------------------------------------------------------------
BSK_SEL_HD int popc32(uint32_t m) {
#if defined(__CUDA_ARCH__)
  return __popc(m);
#else
  return __builtin_popcount(m);
#endif
}
BSK_SEL_HD int ctz32(uint32_t m) {  // m != 0
#if defined(__CUDA_ARCH__)
  return __ffs(m) - 1;
#else
  return __builtin_ctz(m);
#endif
}
// Position of the q-th (1-based) set bit of m (q <= popc(m)).
BSK_SEL_HD int nth_bit(uint32_t m, int q) {
#if defined(__CUDA_ARCH__)
  return static_cast<int>(__fns(m, 0, q));
#else
  for (int i = 1; i < q; ++i) m &= m - 1;
  return ctz32(m);
#endif
}

// prmt.b32 in its default mode: byte t of the result is source byte sel[t] & 7 of {b:a}, or,
// when sel[t] & 8, that byte's sign bit replicated over the byte.
BSK_SEL_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
#else
  const uint64_t src = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int t = 0; t < 4; ++t) {
    const uint32_t s = (sel >> (4 * t)) & 15u;
    uint32_t byte = static_cast<uint32_t>(src >> (8 * (s & 7u))) & 0xffu;
    if (s & 8u) byte = (byte & 0x80u) ? 0xffu : 0u;
    r |= byte << (8 * t);
  }
  return r;
#endif
}
// Per-halfword subtraction (no borrow across the halves).
BSK_SEL_HD uint32_t vsub2(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __vsub2(a, b);
#else
  const uint32_t lo = (a - b) & 0xffffu, hi = ((a >> 16) - (b >> 16)) & 0xffffu;
  return lo | (hi << 16);
#endif
}
// Bit b of the result: halfword b of w[0..15] (w[i] holds halfwords 2i, 2i+1) is below L, for
// halfwords and L <= 2^15: the sign of each halfword of w - L. The signs are gathered a byte at a
// time: prmt replicates the sign of bytes 1 and 3 of two words into four bytes, those are masked
// to distinct bits, and a multiply by 0x01010101 sums a product's four bytes into its top byte.
// ~43 instructions for 32 keys against ~79 for shifting each sign into place.
BSK_SEL_HD uint32_t below_mask_u16(const uint32_t (&w)[16], uint32_t L) {
  const uint32_t ll = L * 0x10001u;
  uint32_t top[4];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int g = 0; g < 4; ++g) {
    const uint32_t lo = prmt(vsub2(w[4 * g], ll), vsub2(w[4 * g + 1], ll), 0xfdb9u);
    const uint32_t hi = prmt(vsub2(w[4 * g + 2], ll), vsub2(w[4 * g + 3], ll), 0xfdb9u);
    top[g] = (lo & 0x08040201u) * 0x01010101u + (hi & 0x80402010u) * 0x01010101u;
  }
  return prmt(prmt(top[0], top[1], 0x73u), prmt(top[2], top[3], 0x73u), 0x5410u);
}

// t ? a : b as a select the compiler cannot turn back into branches (the front end makes a
// switch of the cursor choice in tick, whose paths a divergent warp issues one after another).
BSK_SEL_HD uint32_t select_u32(bool t, uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("{\n .reg .pred p;\n setp.ne.u32 p, %1, 0;\n selp.b32 %0, %2, %3, p;\n}\n"
      : "=r"(r)
      : "r"(static_cast<uint32_t>(t)), "r"(a), "r"(b));
  return r;
#else
  return t ? a : b;
#endif
}
BSK_SEL_HD int select_i32(bool t, int a, int b) {
  return static_cast<int>(select_u32(t, static_cast<uint32_t>(a), static_cast<uint32_t>(b)));
}
BSK_SEL_HD int64_t select_i64(bool t, int64_t a, int64_t b) {
  const uint64_t ua = static_cast<uint64_t>(a), ub = static_cast<uint64_t>(b);
  const uint64_t lo = select_u32(t, static_cast<uint32_t>(ua), static_cast<uint32_t>(ub));
  const uint64_t hi =
      select_u32(t, static_cast<uint32_t>(ua >> 32), static_cast<uint32_t>(ub >> 32));
  return static_cast<int64_t>(lo | (hi << 32));
}

// First rank r in [lo, hi) with v(r) < y (hi if none).
template <class K>
BSK_SEL_HD int first_lt(const K& keys, int64_t y, int lo, int hi) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (keys.v(mid) < y)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// A position on the alive keys of the current L: p is an alive rank or n. Caches the alive mask
// of its 32-rank word p >> 5 (kept current under removals by tick) and the fixed value at p.
// A default cursor (p = -1) has no cached word.
struct Cursor {
  int p = -1;
  uint32_t m = 0;
  int64_t v = 0;
};

// Moves c to the first alive rank >= p (n if none), p >= c.p.
template <class K>
BSK_SEL_HD void seek(const K& keys, Cursor& c, int p, int L) {
  const int n = keys.n;
  if (p >= n) {
    c.p = n;
    return;
  }
  int w = p >> 5;
  uint32_t m = (c.p >= 0 && c.p < n && (c.p >> 5) == w) ? c.m : keys.alive_mask(w, L);
  uint32_t rest = m & (~0u << (p & 31));
  while (rest == 0) {
    ++w;
    if ((w << 5) >= n) {
      c.p = n;
      return;
    }
    m = keys.alive_mask(w, L);
    rest = m;
  }
  c.p = (w << 5) + ctz32(rest);
  c.m = m;
  c.v = keys.v(c.p);
}

// Alive count and fixed sum over ranks [a, b).
template <class K>
BSK_SEL_HD void range_stats_body(const K& keys, int L, int a, int b, int& cnt, int64_t& sum) {
  cnt = 0;
  sum = 0;
  if (a >= b) return;
  for (int w = a >> 5; (w << 5) < b; ++w) {
    uint32_t m = keys.alive_mask(w, L);
    const int lo = a - (w << 5), hi = b - (w << 5);
    if (lo > 0) m &= ~0u << lo;
    if (hi < 32) m &= (1u << hi) - 1u;
    cnt += popc32(m);
    const int base = w << 5;
    if (base + 32 <= keys.n) {
      // Whole word in range: independent masked loads (no serial bit loop on the device).
      int64_t s = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int i = 0; i < 32; ++i)
        if ((m >> i) & 1u) s += keys.v(base + i);
      sum += s;
    } else {
      while (m) {
        sum += keys.v(base + ctz32(m));
        m &= m - 1;
      }
    }
  }
}

// Keys types may ask for range_stats out of line (static constexpr bool kStatsCall = true): its
// unrolled word loop, inlined, is copied into every table query (~830 LDS.64 between the table
// and the sweep of the 4096-key kernel, ~170 KB of instructions), more code than the instruction
// caches hold for three co-resident CTAs in different phases. Measured on the H200 (select
// kernel): 4096 keys at 3 CTAs per SM -4.6%, the global path (S 65536) -5.5%, but 16384 keys at
// one CTA per SM +2.6%, so the kernels choose per instantiation.
template <class K, class = void>
struct stats_call : std::false_type {};
template <class K>
struct stats_call<K, std::void_t<decltype(K::kStatsCall)>> : std::bool_constant<K::kStatsCall> {};

// Keys types may ask for tick's cursor move as selects (static constexpr bool kCursorSelect =
// true): the moved cursor taken out of its slot and put back by selp (select_u32) instead of the
// switch the front end makes of the choice, whose four paths a divergent warp issues one after
// another. Measured on the H200 (select kernel, at 3868a01 with the u16 masks):
// shared-memory path 4096 keys 1397 -> 1377 us, 16384 keys 1920 -> 1834 us; but the global path
// (S 65536) 3796 -> 5110 us (its sweep phase 4.17 M -> 6.56 M cycles), so only the
// shared-memory kernel takes it.
template <class K, class = void>
struct cursor_select : std::false_type {};
template <class K>
struct cursor_select<K, std::void_t<decltype(K::kCursorSelect)>>
    : std::bool_constant<K::kCursorSelect> {};

#if defined(__CUDACC__)
struct RangeStats {
  int cnt;
  int64_t sum;
};
template <class K>
__device__ __noinline__ RangeStats range_stats_call(const K keys, int L, int a, int b) {
  RangeStats r;
  range_stats_body(keys, L, a, b, r.cnt, r.sum);
  return r;
}
#endif

template <class K>
BSK_SEL_HD void range_stats(const K& keys, int L, int a, int b, int& cnt, int64_t& sum) {
#if defined(__CUDA_ARCH__)
  if constexpr (stats_call<K>::value) {
    const RangeStats r = range_stats_call(keys, L, a, b);
    cnt = r.cnt;
    sum = r.sum;
    return;
  }
#endif
  range_stats_body(keys, L, a, b, cnt, sum);
}

// Alive count over ranks [a, b).
template <class K>
BSK_SEL_HD int range_count(const K& keys, int L, int a, int b) {
  int cnt = 0;
  for (int w = a >> 5; (w << 5) < b; ++w) {
    uint32_t m = keys.alive_mask(w, L);
    const int lo = a - (w << 5), hi = b - (w << 5);
    if (lo > 0) m &= ~0u << lo;
    if (hi < 32) m &= (1u << hi) - 1u;
    cnt += popc32(m);
  }
  return cnt;
}

// End of the run of keys equal to the key at rank r (the first rank > r with another value).
template <class K>
BSK_SEL_HD int tie_end(const K& keys, int r, int64_t v) {
  const int n = keys.n;
  if (r + 1 >= n || keys.v(r + 1) != v) return r + 1;
  int step = 2, lo = r + 1, hi;
  for (;;) {  // gallop, then bisect: ties are rare except in tie-heavy inputs
    hi = r + step;
    if (hi >= n || keys.v(hi) != v) break;
    lo = hi;
    step *= 2;
  }
  if (hi > n) hi = n;
  return first_lt(keys, v, lo + 1, hi);  // v(hi) < v or hi == n
}

// ---------------------------------------------------------------------------------------------
// Prefix statistics of the alive keys of one L from a table row: cnt[w - 1], sum[w - 1] hold the
// alive count and fixed sum over ranks [0, w << wdlog) for w = 1 .. nw - 1
// (nw = ceil(n / 2^wdlog), wdlog >= 5). Queries scan at most half a table word.
// ---------------------------------------------------------------------------------------------
template <class CntT>
struct TableRow {
  const CntT* cnt = nullptr;
  const int64_t* sum = nullptr;
  int wdlog = 5;
  int nw = 1;
};

template <class K, class CntT>
BSK_SEL_HD void table_q(const K& keys, const TableRow<CntT>& t, int L, int r, int& c_out,
                        int64_t& s_out) {
  const int n = keys.n;
  const int wsize = 1 << t.wdlog;
  int w = r >> t.wdlog;
  if (w > t.nw - 1) w = t.nw - 1;  // r == n on a word boundary: scan the last word
  const int base = w << t.wdlog;
  int c;
  int64_t s;
#if defined(BSK_SELECT_TQ_PREFETCH)
  // Candidate: the table entry (in the workspace, an L2 round trip) read before the scan of the
  // keys, so that its latency overlaps the scan instead of following it.
  const bool down = 2 * (r - base) > wsize && w + 1 < t.nw;
  const int we = down ? w : w - 1;
  const int tc = we >= 0 ? static_cast<int>(t.cnt[we]) : 0;
  const int64_t ts = we >= 0 ? t.sum[we] : 0;
  if (down) {
    range_stats(keys, L, r, base + wsize, c, s);
    c_out = tc - c;
    s_out = ts - s;
  } else {
    range_stats(keys, L, base, r < n ? r : n, c, s);
    c_out = tc + c;
    s_out = ts + s;
  }
#else
  if (2 * (r - base) > wsize && w + 1 < t.nw) {
    // Closer to the next word boundary: subtract the keys in [r, base + wsize).
    range_stats(keys, L, r, base + wsize, c, s);
    c_out = static_cast<int>(t.cnt[w]) - c;
    s_out = t.sum[w] - s;
  } else {
    range_stats(keys, L, base, r < n ? r : n, c, s);
    c_out = (w > 0 ? static_cast<int>(t.cnt[w - 1]) : 0) + c;
    s_out = (w > 0 ? t.sum[w - 1] : 0) + s;
  }
#endif
}

// Rank of the k-th alive key (k >= 1, at least k alive keys).
template <class K, class CntT>
BSK_SEL_HD int table_select(const K& keys, const TableRow<CntT>& t, int L, int64_t k) {
  int lo = 0, hi = t.nw - 1;  // the last word boundary w with count(w << wdlog) < k
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (static_cast<int64_t>(t.cnt[mid - 1]) < k)
      lo = mid;
    else
      hi = mid - 1;
  }
  int64_t c = lo > 0 ? static_cast<int64_t>(t.cnt[lo - 1]) : 0;
  for (int w = (lo << t.wdlog) >> 5;; ++w) {
    const uint32_t m = keys.alive_mask(w, L);
    const int pc = popc32(m);
    if (c + pc >= k) return (w << 5) + nth_bit(m, static_cast<int>(k - c));
    c += pc;
  }
}

// ---------------------------------------------------------------------------------------------
// Sweep state for one prefix length L (alive keys: idx < L), valid when L > k.
// T = tn / (td * one), td > 0. Cursors sit on alive keys (or n) except while a flag below says
// that one must move.
// ---------------------------------------------------------------------------------------------
struct SweepState {
  int L = 0;
  Cursor th;  // theta (th.p = -1 when k == 0)
  Cursor p1, p2, p3;
  int ns = 0, na = 0, ne = 0;
  int64_t sa = 0;
  int64_t tn = 0, td = 1;
  int64_t teq = 0;  // the value of the keys in [p2, p3) (== T) when ne > 0
};

// One chunk's work as a flat state machine: every call (tick) does one bounded piece of work, so
// the 32 lanes of a warp never wait for each other inside nested data-dependent loops.
struct Lane {
  SweepState st;
  int lo = 0;        // the last L of the chunk
  bool acc = false;  // T is an accepted root candidate: tau once nothing is pending
  bool mth = false;  // theta must move on (a key above it left)
  bool m1 = false, m2 = false, m3 = false;  // p1/p2/p3 sits on the key that left
  bool done = true;
};

// Outputs of a computed row.
struct RowOut {
  float tau, theta_val;
  int32_t theta_idx, n_active;
};

// The row of T = tn / (td * one), theta at rank th and n_active (also the walk's rows,
// sparsek_select_walk.h).
template <class K>
BSK_SEL_HD RowOut make_row(const K& keys, int64_t tn, int64_t td, int th, int n_active, int64_t k,
                           const Fixed& fx) {
  RowOut o;
  o.tau = static_cast<float>(static_cast<double>(tn) / static_cast<double>(td) * fx.inv);
  if (k > 0) {
    o.theta_val = keys.fval(th);
    o.theta_idx = static_cast<int32_t>(keys.idx(th));
  } else {  // k == 0: nothing selected, tau = the largest candidate score
    o.theta_val = bits_float(0x7f800000u);
    o.theta_idx = -1;
  }
  o.n_active = n_active;
  return o;
}
// A computed row (L > k, every candidate finite).
template <class K>
BSK_SEL_HD RowOut computed_row(const K& keys, const SweepState& st, int64_t k, const Fixed& fx) {
  return make_row(keys, st.tn, st.td, st.th.p, st.na, k, fx);
}

// The cursor move a tick would make (0: none): 1 theta, 2/3/4 p1/p2/p3 off the removed key,
// 5 saturation (u >= T + 1), 6 activation (u > T), 7 eq (u == T; every key from p2 on has
// u <= T).
template <class K>
BSK_SEL_HD int pending_move(const K& keys, const Lane& ln, int64_t one) {
  const SweepState& st = ln.st;
  const int n = keys.n;
  if (ln.mth) return 1;
  if (ln.m1) return 2;
  if (ln.m2) return 3;
  if (ln.m3) return 4;
  if (st.p1.p < n && st.p1.v * st.td >= st.tn + st.td * one) return 5;
  if (st.p2.p < n && st.p2.v * st.td > st.tn) return 6;
  if (st.p3.p < n && st.p3.v * st.td >= st.tn) return 7;
  return 0;
}

// True when the next tick emits the row of st.L (its state is final).
template <class K>
BSK_SEL_HD bool row_ready(const K& keys, const Lane& ln, int64_t one) {
  return pending_move(keys, ln, one) == 0 && ln.acc && ln.st.na + ln.st.ne > 0;
}

// One tick. In order of priority:
//  1. a cursor that must move (theta after a removal above it, a cursor on the removed key, or a
//     boundary that the current T puts on the wrong side of its key) moves on by one alive key,
//     updating the counts: the boundaries only ever move towards larger ranks; the tick ends
//     there unless the partition is now consistent;
//  2. otherwise (or then) the partition is consistent with T. If T is an accepted root with keys
//     active just below it, it is tau: emit the row and remove the key L - 1 (the sweep step);
//  3. then the next root candidate from the counts: tn / td = (ns - k + sum of the keys active
//     just below T) / their number, accepted if it lies above both next breakpoints (the largest
//     dead key's value, the largest active value minus 1); else T moves down to that breakpoint.
// emit(L, RowOut) for each row; on_select(r, L) for each key theta reaches.
template <class K, class Emit, class OnSelect>
BSK_SEL_HD void tick(const K& keys, Lane& ln, int64_t k, const Fixed& fx, Emit&& emit,
                     OnSelect&& on_select) {
  SweepState& st = ln.st;
  const int n = keys.n;
  const int64_t one = fx.one;
  // --- 1. Cursor moves.
  const int kind = pending_move(keys, ln, one);
  if (kind != 0) {
    const bool on1 = kind == 2 || kind == 5, on2 = kind == 3 || kind == 6;
    // on0 / on3: the selects' choices (here, where the measured build computed them).
    [[maybe_unused]] const bool on0 = kind == 1, on3 = !(on0 || on1 || on2);
    Cursor c;
    if constexpr (cursor_select<K>::value) {
      c.p = select_i32(on0, st.th.p, select_i32(on1, st.p1.p, select_i32(on2, st.p2.p, st.p3.p)));
      c.m = select_u32(on0, st.th.m, select_u32(on1, st.p1.m, select_u32(on2, st.p2.m, st.p3.m)));
      c.v = select_i64(on0, st.th.v, select_i64(on1, st.p1.v, select_i64(on2, st.p2.v, st.p3.v)));
    } else {
      // kind == 1 here and below, not on0: the same value, but on0 gave other SASS than the
      // measured build.
      c = kind == 1 ? st.th : (on1 ? st.p1 : (on2 ? st.p2 : st.p3));
    }
    // Boundary moves (5-7) take the whole run of keys equal to c.v at once: they classify alike,
    // their sum is count * value, and tie-heavy inputs then cost one tick per distinct value.
    int next = c.p + 1, cnt = 1;
    if (kind >= 5) {
      next = tie_end(keys, c.p, c.v);
      if (next > c.p + 1) cnt = range_count(keys, st.L, c.p, next);
    }
    if (kind == 5) {
      if (c.p < st.p2.p) {
        st.na -= cnt;
        st.sa -= cnt * c.v;
      } else if (c.p < st.p3.p) {
        st.ne -= cnt;
      }
      st.ns += cnt;
    } else if (kind == 6) {
      if (c.p < st.p3.p) st.ne -= cnt;
      st.na += cnt;
      st.sa += cnt * c.v;
    } else if (kind == 7) {
      st.ne += cnt;
    }
    seek(keys, c, next, st.L);
    if constexpr (cursor_select<K>::value) {
      auto put = [&](Cursor& dst, bool t) {
        dst.p = select_i32(t, c.p, dst.p);
        dst.m = select_u32(t, c.m, dst.m);
        dst.v = select_i64(t, c.v, dst.v);
      };
      put(st.th, on0);
      put(st.p1, on1);
      put(st.p2, on2);
      put(st.p3, on3);
      ln.mth = ln.mth && !on0;
      ln.m1 = ln.m1 && !on1;
      ln.m2 = ln.m2 && !on2;
      ln.m3 = ln.m3 && !on3;
      if (on0) on_select(c.p, st.L);
    } else if (kind == 1) {
      st.th = c;
      ln.mth = false;
      on_select(c.p, st.L);
    } else if (on1) {
      st.p1 = c;
      ln.m1 = false;
    } else if (on2) {
      st.p2 = c;
      ln.m2 = false;
    } else {
      st.p3 = c;
      ln.m3 = false;
    }
    if (st.p2.p < st.p1.p) {
      st.p2 = st.p1;
      ln.m2 = false;
    }
    if (st.p3.p < st.p2.p) {
      st.p3 = st.p2;
      ln.m3 = ln.m2;
    }
    // A move that leaves the partition consistent goes on to step 2 in the same tick: the same
    // sequence of states as two ticks, but a lane's rows mostly alternate one move and one step,
    // and a warp issues both paths in nearly every tick anyway (its lanes diverge). Seed shape on
    // an H200: the slowest lane's ticks 131 -> 88, the sweep phase -22%, the kernel -10%.
    if (pending_move(keys, ln, one) != 0) return;
  }
  // --- 2. Consistent partition.
  if (st.ne > 0) st.teq = st.p2.v;  // the first key from p2 on is one of them
  bool emitting = false;
  int emit_l = 0;
  RowOut out;
  if (ln.acc && st.na + st.ne > 0) {
    // The row is complete; it is written at the end of the tick so that the arithmetic of the
    // outputs overlaps the removal and the next candidate.
    out = computed_row(keys, st, k, fx);
    emit_l = st.L;
    emitting = true;
    if (st.L <= ln.lo) {
      ln.done = true;
      emit(emit_l, out);
      return;
    }
    const int j = st.L - 1;
    const int r = keys.pos(j);
    st.L = j;
    if (r < st.p1.p) {
      st.ns--;
    } else if (r < st.p2.p) {
      st.na--;
      st.sa -= keys.v(r);
    } else if (r < st.p3.p) {
      st.ne--;
    }
    // The cached alive masks lose the removed key.
    const int rw = r >> 5;
    const uint32_t keep = ~(1u << (r & 31));
    if ((st.th.p >> 5) == rw) st.th.m &= keep;  // (a cursor at n never reads its mask again)
    if ((st.p1.p >> 5) == rw) st.p1.m &= keep;
    if ((st.p2.p >> 5) == rw) st.p2.m &= keep;
    if ((st.p3.p >> 5) == rw) st.p3.m &= keep;
    ln.mth = k > 0 && r <= st.th.p;
    ln.m1 = r == st.p1.p;
    ln.m2 = r == st.p2.p;
    ln.m3 = r == st.p3.p;
    ln.acc = false;
    if (ln.mth || ln.m1 || ln.m2 || ln.m3) {
      emit(emit_l, out);
      return;
    }
  }
  // --- 3. Next root candidate (f(T) <= k holds here).
  const int nl = st.na + st.ne;  // active set just below T
  const bool has_dead = st.p3.p < n;
  const int64_t bd = st.p3.v;
  bool has_sat = false;
  int64_t bs = 0;
  if (st.p1.p < st.p2.p) {  // the largest active value
    has_sat = true;
    bs = st.p1.v - one;
  } else if (st.ne > 0) {
    has_sat = true;
    bs = st.teq - one;
  }
  const int64_t nn =
      static_cast<int64_t>(st.ns - k) * one + st.sa + static_cast<int64_t>(st.ne) * st.teq;
  if (nl > 0 && (!has_dead || nn >= bd * nl) && (!has_sat || nn >= bs * nl)) {
    // The root of the linear piece below T. It is tau unless f is flat just below it (every
    // active key saturates exactly there): then na + ne == 0 once consistent and the walk goes on.
    st.tn = nn;
    st.td = nl;
    ln.acc = true;
  } else {
    // The root lies below the highest breakpoint under T (one exists: f(-inf) = L > k).
    st.tn = has_dead ? (has_sat && bs > bd ? bs : bd) : bs;
    st.td = 1;
    ln.acc = false;
  }
  if (emitting) emit(emit_l, out);
}

// ---------------------------------------------------------------------------------------------
// From-scratch start of a chunk at prefix length L (> k). theta comes from the table; then a
// binary search over the ranks finds the smallest score T0 >= tau (f(x) <= k <=> x >= tau,
// evaluated exactly from the table), the partition at T0 is set up exactly, and the ticks walk
// the last breakpoints down to tau. For k == 0 tau is the largest alive score.
// ---------------------------------------------------------------------------------------------
template <class K, class CntT>
BSK_SEL_HD int64_t f_at(const K& keys, const TableRow<CntT>& t, int L, int64_t x, int64_t one,
                        int& r1_lo, int r1_hi, int r2) {
  // f(x) = #{u >= x + 1} + sum_{x < u < x + 1} (u - x), in units of 1/one; r2 = #{u > x}. On
  // return r1_lo = #{u >= x + 1}.
  const int r1 = first_lt(keys, x + one, r1_lo, r1_hi);  // ranks < r1: u >= x + 1
  int a1, a2;
  int64_t s1, s2;
  table_q(keys, t, L, r1, a1, s1);
  table_q(keys, t, L, r2, a2, s2);
  r1_lo = r1;
  return static_cast<int64_t>(a1) * one + (s2 - s1) - x * static_cast<int64_t>(a2 - a1);
}

template <class K, class CntT>
BSK_SEL_HD bool f_le_k(const K& keys, const TableRow<CntT>& t, int L, int64_t x, int64_t k,
                       int64_t one, int& r1_lo, int r1_hi, int r2) {
  return f_at(keys, t, L, x, one, r1_lo, r1_hi, r2) <= k * one;
}

// The exact partition at T0 = v(good) (the smallest score >= tau) for a chunk start; r1_lo: a
// lower bound of #{u >= T0 + 1}.
template <class K, class CntT>
BSK_SEL_HD void start_partition(const K& keys, const TableRow<CntT>& t, int L, int good, int r1_lo,
                                int64_t one, SweepState& st) {
  const int n = keys.n;
  const int64_t t0 = keys.v(good);
  const int r1 = first_lt(keys, t0 + one, r1_lo, good);
  const int r2 = first_lt(keys, t0 + 1, r1, good + 1);  // #{u > T0}
  const int r3 = first_lt(keys, t0, good, n);           // #{u >= T0}
  int a1, a2, a3;
  int64_t s1, s2, s3;
  table_q(keys, t, L, r1, a1, s1);
  table_q(keys, t, L, r2, a2, s2);
  table_q(keys, t, L, r3, a3, s3);
  st.ns = a1;
  st.na = a2 - a1;
  st.sa = s2 - s1;
  st.ne = a3 - a2;
  st.teq = t0;
  st.tn = t0;
  st.td = 1;
  seek(keys, st.p1, r1, L);
  st.p2 = st.p1;
  seek(keys, st.p2, r2, L);
  st.p3 = st.p2;
  seek(keys, st.p3, r3, L);
}

// A lane about to start its chunk at prefix length L (rows down to lo): its state, cleared.
BSK_SEL_HD SweepState& reset_lane(Lane& ln, int L, int lo) {
  ln = Lane();
  ln.lo = lo;
  ln.done = false;
  ln.st.L = L;
  return ln.st;
}

template <class K, class CntT>
BSK_SEL_HD void init_lane(const K& keys, const TableRow<CntT>& t, int L, int lo, int64_t k,
                          int64_t one, Lane& ln) {
  const int n = keys.n;
  SweepState& st = reset_lane(ln, L, lo);
  int r0;
  if (k > 0) {
    r0 = table_select(keys, t, L, k);
    seek(keys, st.th, r0, L);
  } else {
    Cursor c;
    seek(keys, c, 0, L);
    r0 = c.p;
    st.th.p = -1;
  }
  // Largest rank R in [r0, n) with v(R) >= tau (R = r0 qualifies: f(theta) <= k - 1).
  int good = r0, bad = n;
  int r1_lo = 0;  // #{u >= x + 1} only grows as x falls
  while (bad - good > 1) {
    const int mid = (good + bad) >> 1;
    const int64_t x = keys.v(mid);
    // #{u > x}: mid unless mid sits inside a tie group.
    const int r2 = keys.v(mid - 1) > x ? mid : first_lt(keys, x + 1, 0, mid);
    int lo1 = r1_lo;
    if (f_le_k(keys, t, L, x, k, one, lo1, r2, r2)) {
      good = mid;
      r1_lo = lo1;
    } else {
      bad = mid;
    }
  }
  start_partition(keys, t, L, good, r1_lo, one, st);
}

// The search's bad end from theta alone: tau >= min(theta - 1, u of the next alive key after theta)
// (above theta - 1 the k keys from theta up are saturated, so f can reach k there only when no
// other key is above tau, i.e. tau is the largest other score), and every rank whose score is
// below tau fails f(v) <= k. Returns the first rank below that bound (n if none).
template <class K>
BSK_SEL_HD int start_bad_bound(const K& keys, int r0, int L, int64_t one) {
  Cursor nx;
  seek(keys, nx, r0 + 1, L);
  int64_t lbv = keys.v(r0) - one;
  if (nx.p < keys.n && nx.v < lbv) lbv = nx.v;
  return first_lt(keys, lbv, r0 + 1, keys.n);
}

// No-op stage hook of init_lane_falsi (the kernel's profile build passes a clock reader).
struct NoMark {
  BSK_SEL_HD void operator()(int) const {}
};

// init_lane with the search for T0 by regula falsi (Illinois) on the values of f instead of
// bisecting the ranks, in the bracket [theta's rank, start_bad_bound): each exact evaluation of
// f (two table queries, the expensive part of a start) also places the next probe. P(R) =
// f(v(R)) <= k is monotone in the rank, so the result is the same largest good rank as
// init_lane's, and with it the same state. evals (optional) counts the evaluations of f; mark(0)
// runs once theta and the bracket are known, mark(1) after the search.
template <class K, class CntT, class Mark = NoMark>
BSK_SEL_HD void init_lane_falsi(const K& keys, const TableRow<CntT>& t, int L, int lo, int64_t k,
                                int64_t one, Lane& ln, int* evals = nullptr, Mark mark = Mark{}) {
  if (k <= 0) {  // tau is the largest alive score: no search
    init_lane(keys, t, L, lo, k, one, ln);
    return;
  }
  const int n = keys.n;
  SweepState& st = reset_lane(ln, L, lo);
  const int r0 = table_select(keys, t, L, k);
  seek(keys, st.th, r0, L);
  int r1_lo = 0;  // #{u >= x + 1} at the good end: a lower bound for every x below it
  // f at the score of rank R, in fixed units; r1 = #{u >= v(R) + 1}.
  auto eval = [&](int R, int& r1) {
    const int64_t x = keys.v(R);
    const int r2 = R > 0 && keys.v(R - 1) == x ? first_lt(keys, x + 1, 0, R) : R;  // #{u > x}
    r1 = r1_lo < r2 ? r1_lo : r2;
    if (evals) ++*evals;
    return f_at(keys, t, L, x, one, r1, r2, r2);
  };
  const int64_t kk = k * one;
  int good = r0, bad = start_bad_bound(keys, r0, L, one);
  int r1;
  int64_t fg = 0, fb = 0;
  mark(0);
  if (bad - good > 1) {
    fg = eval(good, r1);
    r1_lo = r1;
    if (bad < n) fb = eval(bad, r1);
  }
  double wg = 1.0, wb = 1.0;  // Illinois weights: halved for an end kept twice in a row
  int last = 0;               // +1: the last probe moved the good end, -1: the bad end
  while (bad - good > 1) {
    int R = (good + bad) >> 1;
    if (bad < n) {
      const int64_t xg = keys.v(good), xb = keys.v(bad);
      const double dg = static_cast<double>(kk - fg) * wg, db = static_cast<double>(fb - kk) * wb;
      const double guess =
          static_cast<double>(xg) - static_cast<double>(xg - xb) * (dg / (dg + db));
      // The largest rank in (good, bad) whose score is >= guess.
      const int64_t y = guess >= static_cast<double>(xg)   ? xg
                        : guess <= static_cast<double>(xb) ? xb + 1
                                                           : static_cast<int64_t>(guess);
      R = first_lt(keys, y, good + 1, bad) - 1;
      R = R <= good ? good + 1 : (R >= bad ? bad - 1 : R);
    }
    const int64_t f = eval(R, r1);
    if (f <= kk) {
      good = R, fg = f, r1_lo = r1;
      wg = 1.0;
      if (last > 0) wb *= 0.5;
      last = 1;
    } else {
      bad = R, fb = f;
      wb = 1.0;
      if (last < 0) wg *= 0.5;
      last = -1;
    }
  }
  mark(1);
  start_partition(keys, t, L, good, r1_lo, one, st);
}

// ---------------------------------------------------------------------------------------------
// Rows without computation.
// ---------------------------------------------------------------------------------------------
// Rows that are not computed: L <= k (everything selected) or a non-finite candidate.
BSK_SEL_HD RowOut trivial_row() {
  RowOut o;
  o.tau = bits_float(0xff800000u);
  o.theta_val = o.tau;
  o.theta_idx = -1;
  o.n_active = 0;
  return o;
}
BSK_SEL_HD RowOut nan_row() {
  RowOut o;
  o.tau = bits_float(0x7fc00000u);
  o.theta_val = o.tau;
  o.theta_idx = -1;
  o.n_active = 0;
  return o;
}
// Row kinds: 0 trivial, 1 NaN, 2 computed.
BSK_SEL_HD int row_kind(const RowPlan& p, int64_t L) {
  if (L <= p.k) return 0;
  return L > p.fnf ? 1 : 2;
}

// ---------------------------------------------------------------------------------------------
// One chunk run to completion (the host emulation; the kernel interleaves the ticks of 32 lanes).
// Returns theta's rank at the start and at the end of the chunk (for mark_selected).
// ---------------------------------------------------------------------------------------------
template <class K, class CntT, class Emit, class OnSelect>
BSK_SEL_HD void run_chunk(const K& keys, const TableRow<CntT>& t, int hi, int lo, int64_t k,
                          const Fixed& fx, Emit&& emit, OnSelect&& on_select, int& th_start,
                          int& th_end) {
  Lane ln;
  init_lane_falsi(keys, t, hi, lo, k, fx.one, ln);  // the kernel's start
  th_start = ln.st.th.p;
  while (!ln.done) tick(keys, ln, k, fx, emit, on_select);
  th_end = ln.st.th.p;
}

// Selection intervals at chunk starts: the alive keys (idx < L) at ranks [r_from, r_to] are
// selected at L = the start of chunk c but were not at L + 1 (r_from = 1 + theta's rank at the
// end of chunk c - 1, or 0 for chunk 0), so their D_j is L. set_d(j, L) records it.
template <class K, class SetD>
BSK_SEL_HD void mark_selected(const K& keys, int L, int r_from, int r_to, SetD&& set_d) {
  for (int r = r_from; r <= r_to; ++r) {
    const int j = keys.idx(r);
    if (j < L) set_d(j, L);
  }
}

// ---------------------------------------------------------------------------------------------
// Union membership: key j with selection interval [j + 1, D_j] (D_j = 0: never selected) is in
// the union of a tile whose rows span L in [la, lb].
// ---------------------------------------------------------------------------------------------
BSK_SEL_HD bool in_union(int64_t d_j, int64_t j, int64_t la, int64_t lb) {
  const int64_t from = j + 1 > la ? j + 1 : la;
  return j + 1 <= lb && d_j >= from;
}

// The attention kernel's n_j for key j of a query tile's union: the tile's rows i (row0 ..
// row0 + rows - 1) with L(i) <= D_j. They are a prefix (L grows with the row), and among the rows
// where j is a candidate (L >= j + 1, which the kernel tests itself) exactly the rows that select
// j, since j is selected for L in [j + 1, D_j]. (L(i) = max(0, lbase + i) and D_j >= 0.)
// lbase_row0 = RowPlan::lbase + row0.
BSK_SEL_HD int64_t union_rows(int64_t d_j, int64_t lbase_row0, int64_t rows) {
  const int64_t nr = d_j - lbase_row0 + 1;
  return nr < 0 ? 0 : (nr > rows ? rows : nr);
}

// Initial D_j before the sweeps: keys selected only in trivial rows (L <= k).
BSK_SEL_HD int64_t initial_d(const RowPlan& p, int64_t j) {
  return j + 1 <= p.ltriv ? p.ltriv : 0;
}

}  // namespace bsk::select_core
