// SparseK selection, the row-parallel "pass" algorithm: the pieces shared by the sm_90a kernel
// (src/kernels/sm90/sparsek_select_sm90.cu, select_passes) and the CPU emulation in
// tests/cpp/test_select_core.cpp. Same problem, sorted order, fixed point and outputs as
// sparsek_select_core.h (read its header first); only the way rows are computed differs.
//
// The sweep of sparsek_select_core.h is a chain of dependent steps per chunk of rows. Here the
// rows of a head are done in passes of up to R consecutive prefix lengths L = L1 .. L1 + R - 1,
// one thread per row, all rows of a pass independent of each other:
//  * The pass knows a lower bound A <= tau(L1) (floor of the previous pass's last tau) and picks
//    an upper end B > A such that at most `band` alive base keys lie in (A, B] and in
//    (A + 1, B + 1) (pass_bounds). For t in [A, B] every key's term clip(u - t, 0, 1) is then
//    one of: 1 (u >= B + 1: "saturated"), 0 (u <= A), u - t (B < u < A + 1: "linear"), or a
//    genuine piecewise term ("band" keys, a few hundred at most).
//  * The base set (keys j < L1, alive for every row of the pass) is summarised by its saturated
//    count, its linear count and sum, and its band keys grouped by distinct value (entries, with
//    prefix counts and sums). f_base(t) is then O(log band) for any t in [A, B]; it is tabulated
//    at every breakpoint of the base in (A, B) (the points, sorted).
//  * Row i (L = L1 + i) adds the pass's keys j in [L1, L1 + i) (the new keys), classified the same
//    way: prefix counts and sums over their index give the saturated and linear parts of row i in
//    O(1), and its new band keys (a prefix of their list) are summed directly.
//  * A row binary-searches the points for the base piece that holds its tau, walks the breakpoints
//    of its own band keys inside that piece (usually none) and solves the linear piece exactly:
//    tau = tn / td with td = the piece's slope (its active-key count). Rows whose tau exceeds B
//    (f(B) > k) fail; since f grows with L they are a suffix, and the next pass starts at the
//    first of them. A pass in which no row succeeds raises A to B, so every pass makes progress.
//  * theta (the k-th alive key) of a row comes from per-word alive counts of the base and, for the
//    new keys, per-word bit masks over their index (the new keys ranked before the word), then
//    the word's own alive mask.
//  * D_j (the last L at which j is selected; the per-tile unions are built from it as before)
//    follows from the rows' theta ranks, which never increase with L: a binary search per key.
// Everything is exact integer arithmetic in the head's fixed point (sparsek_select_core.h), so
// results match the sweep (and the reference) bit for bit in theta and n_active, and tau up to
// the final rounding, which is the same.
#pragma once

#include <cstdint>

#include "bsk/kernels/sm90/sparsek_select_core.h"

namespace bsk::select_core {

// First rank r in [lo, hi) with v(r) <= y (hi if none).
template <class K>
BSK_SEL_HD int first_le(const K& keys, int64_t y, int lo, int hi) {
  return first_lt(keys, y + 1, lo, hi);
}

BSK_SEL_HD int64_t min_i64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// floor(a / b) for b > 0.
BSK_SEL_HD int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// The pass's threshold interval [A, B] and the rank ranges of the key classes:
//   [0, r_sat): u >= B + 1 (saturated);  [r_sat, r_u): band;  [r_u, r_l): linear
//   (B < u < A + 1; empty when r_l == r_u);  [r_l, r_z): band;  [r_z, n): u <= A.
struct PassBounds {
  int64_t A = 0, B = 0;
  int r_sat = 0, r_u = 0, r_l = 0, r_z = 0;
};

// Alive keys (idx < L1) at ranks < r, from the per-word counts cnt_w (see theta_rank).
template <class K>
BSK_SEL_HD int alive_before(const K& keys, const int32_t* cnt_w, int L1, int r) {
  const int w = r >> 5;
  int c = cnt_w[w];
  if ((r & 31) != 0) c += popc32(keys.alive_mask(w, L1) & ((1u << (r & 31)) - 1u));
  return c;
}

template <class K>
BSK_SEL_HD int theta_rank(const K& keys, const int32_t* cnt_w, const uint32_t* mask_w, int mw,
                          int nw, int L1, int i, int64_t k);

// B: at most `band` alive base keys in (A, B] and in (A + 1, B + 1) (plus ties), B > A.
template <class K>
BSK_SEL_HD PassBounds pass_bounds(const K& keys, int64_t A, int band, int64_t one,
                                  const int32_t* cnt_w, int nw, int L1) {
  const int n = keys.n;
  PassBounds b;
  b.A = A;
  const int rz = first_le(keys, A, 0, n);         // ranks < rz: u > A
  const int rl = first_le(keys, A + one, 0, rz);  // ranks < rl: u > A + 1
  int64_t B = A + one;                            // no alive key above A: any B > A will do
  const int cz = alive_before(keys, cnt_w, L1, rz);
  if (cz > 0) {
    const int q = cz > band ? cz - band + 1 : 1;
    B = keys.v(theta_rank(keys, cnt_w, static_cast<const uint32_t*>(nullptr), 0, nw, L1, 0,
                          q));  // an alive u > A
  }
  const int cl = alive_before(keys, cnt_w, L1, rl);
  if (cl > 0) {
    const int q = cl > band ? cl - band + 1 : 1;
    B = min_i64(
        B, keys.v(theta_rank(keys, cnt_w, static_cast<const uint32_t*>(nullptr), 0, nw, L1, 0, q)) -
               one);  // > A
  }
  b.B = B;
  b.r_z = rz;
  b.r_sat = first_lt(keys, B + one, 0, rl);
  b.r_u = first_lt(keys, A + one, rl, rz);
  b.r_l = first_le(keys, B, b.r_sat, rz);
  if (b.r_l <= b.r_u) {  // B >= A + 1 (or nothing in between): no linear class, one band range
    b.r_u = rz;
    b.r_l = rz;
  }
  return b;
}

// The band ranks, [r_sat, r_u) then [r_l, r_z), as one sequence q = 0 .. band_ranks - 1, cut
// into `parts` pieces of band_piece ranks (a multiple of 32) that are scanned independently:
// each piece starts a new entry at its first alive key, so equal values may form two adjacent
// entries (harmless: they are summed alike), at most parts - 1 more entries.
BSK_SEL_HD int band_ranks(const PassBounds& b) {
  return (b.r_u - b.r_sat) + (b.r_z - b.r_l);
}
BSK_SEL_HD int band_rank_at(const PassBounds& b, int q) {
  const int n1 = b.r_u - b.r_sat;
  return q < n1 ? b.r_sat + q : b.r_l + (q - n1);
}
BSK_SEL_HD int band_piece(int total, int parts) {
  const int per = (total + parts - 1) / parts;
  return (per + 31) & ~31;
}
// Entries of a pass at most: 2 band + 1 distinct alive values, plus the pieces' splits.
BSK_SEL_HD int max_entries(int band, int parts) {
  return 2 * band + 1 + parts;
}

// Classes of a key value for the pass: 0 zero, 1 saturated, 2 linear, 3 band.
BSK_SEL_HD int value_class(int64_t v, const PassBounds& b, int64_t one) {
  if (v <= b.A) return 0;
  if (v >= b.B + one) return 1;
  if (v > b.B && v < b.A + one) return 2;
  return 3;
}

BSK_SEL_HD int64_t clip_term(int64_t v, int64_t t, int64_t one) {
  const int64_t d = v - t;
  return d <= 0 ? 0 : (d >= one ? one : d);
}

// The pass's summary of its base set (keys j < L1) and of its new keys. Entries: the base's
// alive band keys grouped by distinct value (at most 2 band + 1), in decreasing value (rank order);
// pc / ps their exclusive prefix counts and sums (ne + 1 values). Points: t = A, every entry value
// v and v - 1 strictly inside (A, B), and B, ascending, with f_base there. New keys: exclusive
// prefixes over the new key index (row i sees the first i new keys) of the saturated count, the
// linear count and sum, the band count; the band keys' values in index order.
struct PassData {
  PassBounds b;
  int64_t one = 1, k = 0;
  int64_t sat = 0, lin_cnt = 0, lin_sum = 0;  // base
  int ne = 0;
  const int64_t* ev = nullptr;  // entry values
  const int32_t* pc = nullptr;
  const int64_t* ps = nullptr;
  int np = 0;
  const int64_t* pt = nullptr;  // point values
  const int64_t* pf = nullptr;  // f_base at the points
  const int32_t* nsat = nullptr;
  const int32_t* nlin = nullptr;
  const int64_t* slin = nullptr;
  const int32_t* nband = nullptr;
  const int64_t* nbv = nullptr;
};

// First entry index in [lo, hi) with value < y (entries are decreasing).
BSK_SEL_HD int entry_first_lt(const int64_t* ev, int64_t y, int lo, int hi) {
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (ev[mid] < y)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// f of the base set at t in [A, B], in units of 1/one.
BSK_SEL_HD int64_t f_base(const PassData& d, int64_t t) {
  const int nh = entry_first_lt(d.ev, t + d.one, 0, d.ne);  // entries with v >= t + 1
  const int nl = entry_first_lt(d.ev, t + 1, nh, d.ne);     // entries with v > t
  return (d.sat + d.pc[nh]) * d.one + d.lin_sum - d.lin_cnt * t + (d.ps[nl] - d.ps[nh]) -
         static_cast<int64_t>(d.pc[nl] - d.pc[nh]) * t;
}

// The point list, by element. Entries [x0, x1) have A < v < B, entries [y0, y1) have
// A < v - 1 < B (both ranges of the decreasing entry list). np = 2 + (x1 - x0) + (y1 - y0).
struct PointRanges {
  int x0 = 0, x1 = 0, y0 = 0, y1 = 0;
};

BSK_SEL_HD PointRanges point_ranges(const PassData& d) {
  PointRanges r;
  r.x0 = entry_first_lt(d.ev, d.b.B, 0, d.ne);
  r.x1 = entry_first_lt(d.ev, d.b.A + 1, r.x0, d.ne);
  r.y0 = entry_first_lt(d.ev, d.b.B + d.one, 0, d.ne);
  r.y1 = entry_first_lt(d.ev, d.b.A + d.one + 1, r.y0, d.ne);
  return r;
}

// Position (1-based; 0 is A) and value of the point of entry e from the x range (v) or the y
// range (v - 1). Ties between the two ranges put the x point first.
BSK_SEL_HD int point_pos_x(const PassData& d, const PointRanges& r, int e) {
  // ascending rank among x points + y points with v' - 1 < v_e (a suffix of the y range)
  return 1 + (r.x1 - 1 - e) + (r.y1 - entry_first_lt(d.ev, d.ev[e] + d.one, r.y0, r.y1));
}
BSK_SEL_HD int point_pos_y(const PassData& d, const PointRanges& r, int e) {
  // x points with v' <= v_e - 1 (a suffix of the x range)
  return 1 + (r.y1 - 1 - e) + (r.x1 - entry_first_lt(d.ev, d.ev[e] - d.one + 1, r.x0, r.x1));
}

// f of the new keys of row i at t.
BSK_SEL_HD int64_t f_new(const PassData& d, int i, int64_t t) {
  int64_t f = static_cast<int64_t>(d.nsat[i]) * d.one + d.slin[i] - d.nlin[i] * t;
  const int nb = d.nband[i];
  for (int e = 0; e < nb; ++e) f += clip_term(d.nbv[e], t, d.one);
  return f;
}

struct RowSolve {
  bool ok = false;  // tau(L) <= B
  int64_t tn = 0, td = 1;
  int n_active = 0;
};

// Row i of the pass (L = L1 + i).
BSK_SEL_HD RowSolve solve_row(const PassData& d, int i) {
  RowSolve s;
  const int64_t kk = d.k * d.one;
  const int last = d.np - 1;
  int64_t fa = d.pf[0] + f_new(d, i, d.b.A);
  int64_t a, b, fb;
  if (fa <= kk) {  // tau >= A (A <= the previous row's tau) and f(A) <= k
    s.tn = d.b.A;
    s.td = 1;
    a = b = d.b.A;
  } else {
    fb = d.pf[last] + f_new(d, i, d.b.B);
    if (fb > kk) return s;  // tau > B: a later pass
    int lo = 0, hi = last;  // f(pt[lo]) > k >= f(pt[hi])
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      const int64_t fm = d.pf[mid] + f_new(d, i, d.pt[mid]);
      if (fm > kk) {
        lo = mid;
        fa = fm;
      } else {
        hi = mid;
        fb = fm;
      }
    }
    a = d.pt[lo];
    b = d.pt[hi];
    // f_base is linear on [a, b]; the row's own band keys may still break it.
    const int64_t a0 = a, fba = d.pf[lo], fbb = d.pf[hi];
    const int64_t sb = (fba - fbb) / (b - a);  // exact: f_base has an integer slope here
    const int nb = d.nband[i];
    for (;;) {
      int64_t c = b;
      for (int e = 0; e < nb; ++e) {
        const int64_t v = d.nbv[e];
        if (v > a && v < c) c = v;
        if (v - d.one > a && v - d.one < c) c = v - d.one;
      }
      if (c >= b) break;
      const int64_t fc = fba - sb * (c - a0) + f_new(d, i, c);
      if (fc > kk) {
        a = c;
        fa = fc;
      } else {
        b = c;
        fb = fc;
      }
    }
    // f is linear on [a, b] with f(a) > k >= f(b): slope s = the active count, s > 0.
    const int64_t sl = (fa - fb) / (b - a);
    s.tn = a * sl + (fa - kk);
    s.td = sl;
  }
  s.ok = true;
  // n_active = #{alive: tau < u < tau + 1}. Linear keys always are; saturated and zero never.
  int na = static_cast<int>(d.lin_cnt) + d.nlin[i];
  {
    // Entries with u * td < tn + td (u < tau + 1) and u * td > tn (u > tau).
    int lo = 0, hi = d.ne;  // first entry with v * td < tn + td * one
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (d.ev[mid] * s.td < s.tn + s.td * d.one)
        hi = mid;
      else
        lo = mid + 1;
    }
    int lo2 = lo, hi2 = d.ne;  // first entry with v * td <= tn
    while (lo2 < hi2) {
      const int mid = (lo2 + hi2) >> 1;
      if (d.ev[mid] * s.td <= s.tn)
        hi2 = mid;
      else
        lo2 = mid + 1;
    }
    na += d.pc[lo2] - d.pc[lo];
  }
  const int nb = d.nband[i];
  for (int e = 0; e < nb; ++e) {
    const int64_t v = d.nbv[e] * s.td;
    if (v > s.tn && v < s.tn + s.td * d.one) ++na;
  }
  s.n_active = na;
  (void)a;
  (void)b;
  return s;
}

// theta of row i: the rank of the k-th alive key (idx < L1 + i). cnt_w[w] = base keys (idx < L1)
// at ranks < 32 w, for w = 0 .. nw (nw = ceil(n / 32)); mask_w[w * mw + c] bit q = new key
// 32 c + q (index L1 + 32 c + q) has rank < 32 w; mw words per mask (new keys <= 32 mw).
template <class K>
BSK_SEL_HD int theta_rank(const K& keys, const int32_t* cnt_w, const uint32_t* mask_w, int mw,
                          int nw, int L1, int i, int64_t k) {
  auto count = [&](int w) {
    int c = cnt_w[w];
    for (int q = 0; q < mw && 32 * q < i; ++q) {
      uint32_t m = mask_w[w * mw + q];
      const int rem = i - 32 * q;
      if (rem < 32) m &= (1u << rem) - 1u;
      c += popc32(m);
    }
    return c;
  };
  int lo = 0, hi = nw;  // the last w with count(w) < k (count(0) = 0 < k; count(nw) >= k)
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (count(mid) < k)
      lo = mid;
    else
      hi = mid;
  }
  const int c = count(lo);
  const uint32_t m = keys.alive_mask(lo, L1 + i);
  return (lo << 5) + nth_bit(m, static_cast<int>(k - c));
}

// Alive base count and fixed sum at ranks < r (cnt_w / sum_w: per-word exclusive prefixes).
template <class K>
BSK_SEL_HD void base_prefix(const K& keys, const int32_t* cnt_w, const int64_t* sum_w, int L1,
                            int r, int64_t& c, int64_t& sm) {
  const int w = r >> 5;
  c = cnt_w[w];
  sm = sum_w[w];
  if ((r & 31) != 0) {
    const uint32_t m = keys.alive_mask(w, L1) & ((1u << (r & 31)) - 1u);
    c += popc32(m);
    int64_t x = 0;
    for (int q = 0; q < 32; ++q)
      if ((m >> q) & 1u) x += keys.v((w << 5) + q);
    sm += x;
  }
}

// A lower bound of tau at the first computed row L1 (> k): min(u_(k) - 1, u_(k+1)) over the
// alive keys in decreasing order (below it the top k saturate and the (k+1)-th adds more); the
// largest score itself for k = 0 (which is tau).
template <class K>
BSK_SEL_HD int64_t initial_lower_bound(const K& keys, const int32_t* cnt_w, int nw, int L1,
                                       int64_t k, int64_t one) {
  const uint32_t* none = nullptr;
  const int r1 = theta_rank(keys, cnt_w, none, 0, nw, L1, 0, k > 0 ? k : 1);
  if (k == 0) return keys.v(r1);
  const int r2 = theta_rank(keys, cnt_w, none, 0, nw, L1, 0, k + 1);
  return min_i64(keys.v(r1) - one, keys.v(r2));
}

// D_j from the computed rows' theta ranks (rth[L] for L in [llo, lhi], non-increasing): the
// largest L >= j + 1 in that range whose selection holds j (rank pos_j <= rth[L]); `base` (the
// trivial rows' value, initial_d) when there is none.
BSK_SEL_HD int64_t d_from_thetas(const uint16_t* rth, int64_t llo, int64_t lhi, int64_t j,
                                 int pos_j, int64_t base) {
  int64_t lo = j + 1 > llo ? j + 1 : llo;
  if (lo > lhi || rth[lo] < pos_j) return base;
  int64_t hi = lhi;  // rth[lo] >= pos_j; the last such L
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) >> 1;
    if (rth[mid] >= pos_j)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

}  // namespace bsk::select_core
