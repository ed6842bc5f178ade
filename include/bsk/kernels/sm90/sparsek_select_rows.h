// SparseK selection, row-parallel form: every computed query row finds tau, theta and n_active on
// its own by binary searches over the head's sorted keys, so a GPU thread per row runs the same
// instruction stream as its neighbours (no sweep state machine). Shared by the sm_90a kernel
// (src/kernels/sm90/sparsek_select_sm90.cu, Sk <= kRowsMaxN) and the CPU tests
// (tests/cpp/test_select_rows.cpp). The notation is sparsek_select_core.h's: ranks order the keys
// by (u, j) descending, v(r) is the 64-bit fixed value at rank r, a row is its prefix length L
// (candidates j < L), and f_L(t) = sum_{j<L} clip(u_j - t, 0, 1).
//
// Prefix queries. A row needs cnt_L(R) and S_L(R): the count and fixed sum of its candidates at
// ranks < R. The rows are cut into tiles of kRowTile consecutive L; tile rows L = L0 + i share
//   - the base (keys j < L0): cb[R] (count) and sb[R] (sum) for R = 0..n, and
//   - the tile keys j = L0 + q (q < kRowTile): tm[R] = #{tile keys at ranks < R}, mask[c] = the
//     bit set {q} of the c tile keys of smallest rank, and for each group g of kGroup rows
//     cs[g][c] = the sum of the values of those c keys that have q < kGroup * g.
// Row i adds the tile keys q < i: its count is cb[R] + popc(mask[tm[R]] & (q < i)), its sum
// sb[R] + cs[i / kGroup][tm[R]] + its own < kGroup keys of group i / kGroup (in registers).
// Every term is an exact integer: the queries are exact.
//
// Row search (L > k >= 1; k == 0 is the largest candidate).
//   1. theta: th = the rank of the k-th candidate (smallest R with cnt_L(R) >= k, minus 1).
//   2. f(v_r) <= k holds at r = th (the keys above theta are at most k - 1 and each counts <= 1)
//      and is monotone in r: g = the largest rank r with f(v_r) <= k. Then v_{g+1} < tau <= v_g.
//      f at t needs the rank boundaries #{v >= t + 1} and #{v > t}; keys exactly at a boundary
//      contribute the same on either side (1 at t + 1, 0 at t), so at t = v_r they can be a1[r]
//      (= #{v >= v_r + 1}, per head) and r + 1.
//   3. The breakpoints v_s - 1 inside (v_{g+1}, v_g] are the ranks s in [a1[g], a1[g + 1]):
//      h = the largest such s with f(v_s - 1) <= k (boundaries s + 1 and am1[s] = #{v > v_s -
//      1}). upper = v_h - 1 if h exists, else v_g: the smallest breakpoint >= tau. On the piece
//      below upper no key crosses a boundary, so f is linear there: saturated = ranks
//      < #{v >= upper + 1}, active = ranks in [that, #{v >= upper}), and
//      tau = ((sat - k) * one + S_active) / n_active_piece (> 0 candidates, else f were flat).
//   4. n_active = #{tau < u < tau + 1}: the piece's active keys, less those exactly at upper when
//      tau == upper.
// Global ranks include keys that are not candidates of the row (idx >= L): evaluating f at their
// value is harmless. tau leaves as (double) tn / td * 2^-shift rounded to float, like the sweep.
//
// Monotonicity gives brackets: th(L) and g(L) are non-increasing in L (f_L grows with L), so the
// tile's first and last rows bound every other row's searches.
#pragma once

#include <cstdint>

#include "bsk/kernels/sm90/sparsek_select_core.h"

namespace bsk::select_core {

constexpr int kRowTile = 128;  // rows (consecutive L) per tile
constexpr int kGroup = 8;      // rows per cumulative-sum group
constexpr int kGroups = kRowTile / kGroup;
constexpr int kRowsMaxN = 4096;  // the row-parallel kernel keeps everything in shared memory

constexpr int kCsStride = kRowTile + 1;  // cs[g][c] at g * kCsStride + c
constexpr int kCsEntries = kGroups * kCsStride;

// The shared per-tile arrays (layouts above). mask holds 4 words per entry (kRowTile = 128).
struct TileView {
  const uint16_t* cb = nullptr;    // [n + 1]
  const int64_t* sb = nullptr;     // [n + 1]
  const uint8_t* tm = nullptr;     // [n + 1]
  const uint32_t* mask = nullptr;  // [(kRowTile + 1) * 4]
  const int64_t* cs = nullptr;     // [kGroups][kCsStride]
};

// Row i's own part of the query.
struct RowCtx {
  uint32_t lo[4] = {0, 0, 0, 0};  // tile keys q < i
  int cs_off = 0;                 // (i / kGroup) * kCsStride
  int pr[kGroup - 1];             // ranks of the tile keys kGroup * g .. i - 1 (n + 1 past them)
  int64_t pv[kGroup - 1];         // their fixed values
};

BSK_SEL_HD void low_mask(int i, uint32_t* m) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int w = 0; w < 4; ++w) {
    const int b = i - 32 * w;
    m[w] = b >= 32 ? ~0u : (b <= 0 ? 0u : ((1u << b) - 1u));
  }
}

// tile_rank(q): the rank of tile key q (q < kRowTile with L0 + q < n).
template <class K>
BSK_SEL_HD RowCtx make_row_ctx(const K& keys, int l0, int i) {
  RowCtx c;
  low_mask(i, c.lo);
  const int g = i / kGroup;
  c.cs_off = g * kCsStride;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int e = 0; e < kGroup - 1; ++e) {
    const int q = kGroup * g + e;
    if (q < i) {
      c.pr[e] = keys.pos(l0 + q);
      c.pv[e] = keys.v(c.pr[e]);
    } else {
      c.pr[e] = keys.n + 1;
      c.pv[e] = 0;
    }
  }
  return c;
}

BSK_SEL_HD int popc_and4(const uint32_t* a, const uint32_t* b) {
  return popc32(a[0] & b[0]) + popc32(a[1] & b[1]) + popc32(a[2] & b[2]) + popc32(a[3] & b[3]);
}

BSK_SEL_HD int row_count(const TileView& t, const RowCtx& c, int r) {
  const uint32_t* m = t.mask + 4 * static_cast<int>(t.tm[r]);
  return static_cast<int>(t.cb[r]) + popc_and4(m, c.lo);
}

BSK_SEL_HD void row_query(const TileView& t, const RowCtx& c, int r, int& cnt, int64_t& sum) {
  const int tr = static_cast<int>(t.tm[r]);
  cnt = static_cast<int>(t.cb[r]) + popc_and4(t.mask + 4 * tr, c.lo);
  int64_t s = t.sb[r] + t.cs[c.cs_off + tr];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int e = 0; e < kGroup - 1; ++e) s += c.pr[e] < r ? c.pv[e] : 0;
  sum = s;
}

// f_L(t) <= k with the boundaries r1 = #{v >= t + 1}, r2 = #{v > t} (either side of ties).
BSK_SEL_HD bool f_at_le_k(const TileView& t, const RowCtx& c, int64_t x, int r1, int r2,
                          int64_t kone, int64_t one) {
  int a1, a2;
  int64_t s1, s2;
  row_query(t, c, r1, a1, s1);
  row_query(t, c, r2, a2, s2);
  const int64_t f = static_cast<int64_t>(a1) * one + (s2 - s1) - x * static_cast<int64_t>(a2 - a1);
  return f <= kone;
}

// Search brackets (ranks, inclusive), from rows known to bound this one.
struct RowBounds {
  int th_lo = 0, th_hi = 0;  // th in [th_lo, th_hi]
  int g_lo = 0, g_hi = 0;    // g in [g_lo, g_hi] (g_lo is raised to th)
};

BSK_SEL_HD RowBounds full_bounds(int n) {
  RowBounds b;
  b.th_hi = n - 1;
  b.g_hi = n - 1;
  return b;
}

struct RowSolve {
  RowOut out;
  int th = -1;  // theta's rank (the first candidate's rank when k == 0)
  int g = 0;
};

// One computed row (L > k, every candidate finite). a1[r] = #{v >= v_r + one},
// am1[r] = #{v > v_r - one}.
template <class K, class A>
BSK_SEL_HD RowSolve solve_row(const K& keys, const A* a1, const A* am1, const TileView& t,
                              const RowCtx& c, int64_t k, const Fixed& fx, const RowBounds& bd) {
  const int n = keys.n;
  const int64_t one = fx.one;
  RowSolve rs;
  // 1. theta: the smallest R in [th_lo + 1, th_hi + 1] with cnt(R) >= max(k, 1).
  const int64_t kk = k > 0 ? k : 1;
  {
    int lo = bd.th_lo, hi = bd.th_hi + 1;  // cnt(lo) < kk <= cnt(hi)
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (row_count(t, c, mid) >= kk)
        hi = mid;
      else
        lo = mid;
    }
    // lo == th_lo may itself satisfy cnt >= kk only when th_lo == 0 and kk <= 0: excluded.
    rs.th = hi - 1;
  }
  if (k == 0) {  // tau = the largest candidate, nothing selected or active
    rs.out.tau = keys.fval(rs.th);
    rs.out.theta_val = bits_float(0x7f800000u);
    rs.out.theta_idx = -1;
    rs.out.n_active = 0;
    return rs;
  }
  const int64_t kone = k * one;
  // 2. g: the largest r in [max(th, g_lo), g_hi] with f(v_r) <= k.
  int g;
  {
    int lo = bd.g_lo > rs.th ? bd.g_lo : rs.th, hi = bd.g_hi + 1;  // true at lo, false at hi
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      const int64_t x = keys.v(mid);
      if (f_at_le_k(t, c, x, static_cast<int>(a1[mid]), mid + 1, kone, one))
        lo = mid;
      else
        hi = mid;
    }
    g = lo;
  }
  rs.g = g;
  const int64_t vg = keys.v(g);
  // 3. h: the largest s in [a1[g], a1[g + 1]) with f(v_s - 1) <= k.
  const int b_lo = static_cast<int>(a1[g]);
  const int b_hi = g + 1 < n ? static_cast<int>(a1[g + 1]) : n;
  int h;
  {
    int lo = b_lo - 1, hi = b_hi;  // lo: "true" sentinel, hi: false
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      const int64_t x = keys.v(mid) - one;
      if (f_at_le_k(t, c, x, mid + 1, static_cast<int>(am1[mid]), kone, one))
        lo = mid;
      else
        hi = mid;
    }
    h = lo;
  }
  const bool found = h >= b_lo;
  int64_t upper;
  int r1, r2, r2s;  // #{v >= upper + 1}, #{v >= upper}, #{v > upper}
  if (found) {
    upper = keys.v(h) - one;
    r1 = h + 1;
    r2s = static_cast<int>(am1[h]);
    r2 = (r2s < n && keys.v(r2s) == upper) ? tie_end(keys, r2s, upper) : r2s;
  } else {
    upper = vg;
    r1 = b_lo;
    r2 = g + 1;
    r2s = (g > 0 && keys.v(g - 1) == vg) ? first_lt(keys, vg + 1, 0, g) : g;
  }
  // 4. The linear piece below upper.
  int c1, c2;
  int64_t s1, s2;
  row_query(t, c, r1, c1, s1);
  row_query(t, c, r2, c2, s2);
  const int64_t tn = static_cast<int64_t>(c1 - k) * one + (s2 - s1);
  const int64_t td = c2 - c1;
  int n_active = c2 - c1;
  if (tn == upper * td) n_active = row_count(t, c, r2s) - c1;
  rs.out.tau = static_cast<float>(static_cast<double>(tn) / static_cast<double>(td) * fx.inv);
  rs.out.theta_val = keys.fval(rs.th);
  rs.out.theta_idx = static_cast<int32_t>(keys.idx(rs.th));
  rs.out.n_active = n_active;
  return rs;
}

// D_j from theta's ranks: key j is selected at a computed L iff j < L and pos(j) <= th(L), and
// th is non-increasing in L, so its computed selection rows end at the largest L with
// th(L) >= pos(j). th_of(x) = th(llo + x) for x in [0, rows).
template <class ThOf>
BSK_SEL_HD int64_t d_from_theta(const RowPlan& p, int64_t j, int rank_j, ThOf&& th_of) {
  const int64_t rows = p.computed_rows();
  if (p.k > 0 && rows > 0 && th_of(0) >= rank_j) {
    int64_t lo = 0, hi = rows;  // th_of(lo) >= rank_j, th_of(hi) < rank_j (virtual)
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) >> 1;
      if (th_of(mid) >= rank_j)
        lo = mid;
      else
        hi = mid;
    }
    const int64_t last = p.llo + lo;
    if (last > j) return last;
  }
  return initial_d(p, j);
}

}  // namespace bsk::select_core
