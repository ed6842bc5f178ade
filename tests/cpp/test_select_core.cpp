// CPU tests of the SparseK selection core (include/bsk/kernels/sm90/sparsek_select_core.h)
// against an exact brute force written here: for every query row, sort the candidates, find tau
// exactly (128-bit fixed point over the true float values), theta, n_active, and the selection,
// in O(L log L) per row (O(S^2 log S) per head, which is why it lives only in tests).
//
// The core is exercised the way the kernel glue drives it (select_emulate below mirrors
// src/kernels/sm90/sparsek_select_sm90.cu): one sorted order, a per-chunk prefix table read
// through table_q, run_chunk per chunk, the selection-interval fix-ups at chunk starts, and the
// per-tile union via in_union.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bsk/kernels/sm90/sparsek_select_core.h"
#include "bsk/kernels/sm90/sparsek_select_walk.h"
#include "select_host.h"

namespace sc = bsk::select_core;

namespace {

using i128 = __int128;

// ---------------------------------------------------------------------------------------------
// Brute force.
// ---------------------------------------------------------------------------------------------
constexpr int kBruteShift = 80;  // exact for |u| < 2^40 with at most 2^-56 resolution loss

i128 exact_fixed(float u) {
  uint32_t b = sc::float_bits(u);
  int e = static_cast<int>((b >> 23) & 0xff);
  if (e == 0) return 0;  // tests use no subnormals
  i128 m = (b & 0x7fffff) | 0x800000;
  int sh = e - 150 + kBruteShift;
  i128 v = sh >= 0 ? (m << sh) : (m >> -sh);
  return (b >> 31) ? -v : v;
}

struct BruteRow {
  int kind = 0;  // 0 trivial, 1 NaN, 2 computed
  double tau = 0;
  float theta_val = 0;
  int theta_idx = -1;
  int n_active = 0;
  std::vector<int> sel;  // the selected keys (any order)
};

BruteRow brute_row(const std::vector<float>& u, int64_t L, int64_t k) {
  BruteRow out;
  if (L <= k) {
    out.kind = 0;
    for (int j = 0; j < L; ++j) out.sel.push_back(j);
    return out;
  }
  for (int j = 0; j < L; ++j) {
    if (!std::isfinite(u[j])) {
      out.kind = 1;
      return out;
    }
  }
  out.kind = 2;
  std::vector<int> ord(static_cast<size_t>(L));
  std::iota(ord.begin(), ord.end(), 0);
  // (u, j) descending; -0 == +0 as values.
  std::sort(ord.begin(), ord.end(), [&](int a, int b) {
    if (u[a] != u[b]) return u[a] > u[b];
    return a > b;
  });
  for (int64_t i = 0; i < k; ++i) out.sel.push_back(ord[i]);
  if (k > 0) {
    out.theta_val = u[ord[k - 1]];
    out.theta_idx = ord[k - 1];
  } else {
    out.theta_val = std::numeric_limits<float>::infinity();
    out.theta_idx = -1;
  }
  std::vector<i128> w(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) w[i] = exact_fixed(u[ord[i]]);  // descending
  const i128 one = i128(1) << kBruteShift;
  // Breakpoints, descending and unique.
  std::vector<i128> bp;
  bp.reserve(2 * L);
  for (auto x : w) {
    bp.push_back(x);
    bp.push_back(x - one);
  }
  std::sort(bp.begin(), bp.end(), [](i128 a, i128 b) { return a > b; });
  bp.erase(std::unique(bp.begin(), bp.end()), bp.end());
  auto f_gt_k = [&](i128 t) {  // f(t) > k, exactly
    i128 f = 0;
    for (auto x : w) {
      if (x >= t + one)
        f += one;
      else if (x > t)
        f += x - t;
    }
    return f > i128(k) * one;
  };
  // First breakpoint (descending) with f > k; f(bp[0]) = 0 <= k.
  size_t lo = 1, hi = bp.size();
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (f_gt_k(bp[mid]))
      hi = mid;
    else
      lo = mid + 1;
  }
  // tau lies in (bp[lo], bp[lo - 1]]; the piece's partition is the one at the midpoint
  // (bp[lo] exists: f(-inf) = L > k).
  const i128 a = bp[lo], b = bp[lo - 1];
  // t in (a, b): saturated iff x >= t + 1 iff x >= b + 1 (no breakpoint inside); active iff
  // t < x < t + 1 iff x >= b and x <= a + 1... use the midpoint doubled to stay in integers.
  const i128 t2 = a + b;  // 2t
  i128 ns = 0, sum = 0, na = 0;
  for (auto x : w) {
    if (2 * x >= t2 + 2 * one)
      ns++;
    else if (2 * x > t2) {
      na++;
      sum += x;
    }
  }
  EXPECT_GT(static_cast<int64_t>(na), 0);
  const i128 N = (ns - k) * one + sum;  // tau = N / (na * one)
  out.tau = static_cast<double>(static_cast<long double>(N) / static_cast<long double>(na) /
                                std::ldexp(1.0L, kBruteShift));
  int cnt = 0;
  for (auto x : w)
    if (x * na > N && x * na < N + na * one) cnt++;
  out.n_active = cnt;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Emulation of the kernel glue on the host (keys and table: select_host.h).
// ---------------------------------------------------------------------------------------------
using bsk_select_host::build_table;
using bsk_select_host::HostKeys;
using bsk_select_host::HostKeysCursorSelect;
using bsk_select_host::row_of;
using bsk_select_host::sort_keys;
using bsk_select_host::Sorted;
using bsk_select_host::Table;

// A one-row table for an arbitrary L.
Table table_for_L(const HostKeys& keys, int L, int wdlog) {
  const int64_t bound[2] = {L, L - 1};
  return build_table(keys, bound, 1, wdlog);
}

struct EmuOut {
  std::vector<float> tau, theta_val;
  std::vector<int> theta_idx, n_active;
  std::vector<int64_t> d;
  std::vector<std::vector<int>> unions;
};

// linear_cut: chunk bounds from sc::chunk_cost's octave-linear log with 4 k ln L (the other model
// of tools/select_sweep_sim.cpp) instead of the kernel's cut, RowPlan's default.
// walk: the chunks walked upwards (sparsek_select_walk.h, run_chunk_walk) with a table for each
// chunk's first L, instead of the core's downward ticks.
EmuOut select_emulate(const std::vector<float>& u, int64_t sq, int64_t k, int64_t window,
                      int chunks, int wdlog, int tile_q, bool linear_cut = false,
                      bool walk = false) {
  const int n = static_cast<int>(u.size());
  Sorted s = sort_keys(u);
  HostKeys keys = s.keys();
  sc::RowPlan p = sc::make_plan(n, sq, k, window, s.fnf);
  if (linear_cut) {
    p.cost_weight = 4;
    p.cost_cubic = false;
  }
  std::vector<int64_t> bound(chunks + 1);
  const int used = sc::chunk_bounds(p, chunks, bound.data());
  EmuOut o;
  o.tau.assign(sq, -12345.f);
  o.theta_val.assign(sq, -12345.f);
  o.theta_idx.assign(sq, -12345);
  o.n_active.assign(sq, -12345);
  o.d.assign(n, 0);
  for (int j = 0; j < n; ++j) o.d[j] = sc::initial_d(p, j);
  auto put = [&](int64_t i, const sc::RowOut& r) {
    EXPECT_EQ(o.theta_idx[i], -12345) << "row " << i << " written twice";
    o.tau[i] = r.tau;
    o.theta_val[i] = r.theta_val;
    o.theta_idx[i] = r.theta_idx;
    o.n_active[i] = r.n_active;
  };
  for (int64_t i = 0; i < sq; ++i) {
    int kind = sc::row_kind(p, p.row_L(i));
    if (kind == 0) put(i, sc::trivial_row());
    if (kind == 1) put(i, sc::nan_row());
  }
  if (used > 0 && walk) {
    // Chunk c covers L in (bound[c + 1], bound[c]]; its walk starts at wb[c] = bound[c + 1] + 1.
    std::vector<int64_t> wb(used + 1);
    for (int c = 0; c < used; ++c) wb[c] = bound[c + 1] + 1;
    wb[used] = wb[used - 1] - 1;
    Table t = build_table(keys, wb.data(), used, wdlog);
    int th0 = -1;
    for (int c = 0; c < used; ++c) {
      std::vector<uint32_t> mask((n + 31) / 32, 0u);
      for (int j = 0; j < wb[c]; ++j) mask[keys.pos(j) >> 5] |= 1u << (keys.pos(j) & 31);
      int th_top = -1;
      sc::run_chunk_walk(
          keys, mask.data(), row_of(t, c), static_cast<int>(wb[c]), static_cast<int>(bound[c]),
          c > 0, k, s.fx, [&](int L, const sc::RowOut& r) { put(L - p.lbase, r); },
          [&](int r, int L) { o.d[keys.idx(r)] = L; }, th_top);
      if (c == 0) th0 = th_top;
    }
    // Chunk 0 ends at the top computed row: everything selected there.
    sc::mark_selected(keys, static_cast<int>(bound[0]), 0, th0, [&](int j, int L) { o.d[j] = L; });
  } else if (used > 0) {
    Table t = build_table(keys, bound.data(), used, wdlog);
    std::vector<int> th_start(used), th_end(used);
    for (int c = 0; c < used; ++c) {
      EXPECT_GT(bound[c], bound[c + 1]);
      sc::run_chunk(
          keys, row_of(t, c), static_cast<int>(bound[c]), static_cast<int>(bound[c + 1]) + 1, k,
          s.fx, [&](int L, const sc::RowOut& r) { put(L - p.lbase, r); },
          [&](int r, int L) { o.d[keys.idx(r)] = L; }, th_start[c], th_end[c]);
    }
    if (k > 0) {
      for (int c = 0; c < used; ++c) {
        const int from = c == 0 ? 0 : th_end[c - 1] + 1;
        sc::mark_selected(keys, static_cast<int>(bound[c]), from, th_start[c],
                          [&](int j, int L) { o.d[j] = L; });
      }
    }
  }
  const int64_t ntiles = (sq + tile_q - 1) / tile_q;
  o.unions.resize(ntiles);
  int rank_path_bad = 0;
  for (int64_t t = 0; t < ntiles; ++t) {
    const int64_t la = p.row_L(t * tile_q), lb = p.row_L(std::min(sq, (t + 1) * tile_q) - 1);
    for (int j = 0; j < n; ++j)
      if (sc::in_union(o.d[j], j, la, lb)) o.unions[t].push_back(j);
    // The kernel takes a warp's first tile's old keys (j < la) from the ranks up to theta of the
    // tile's first row when that row is computed (sparsek_select_sm90.cu, the unions): the same
    // keys as the scan over j, at most k of them. Checked here for every tile.
    const int64_t i0 = t * tile_q;
    if (k > 0 && sc::row_kind(p, la) == 2 && o.theta_idx[i0] >= 0) {
      const int th = keys.pos(o.theta_idx[i0]);
      std::vector<int> got;
      for (int r = 0; r <= th; ++r) {
        const int j = keys.idx(r);
        if (j < la && sc::in_union(o.d[j], j, la, lb)) got.push_back(j);
      }
      const bool within_k = static_cast<int64_t>(got.size()) <= k;
      std::sort(got.begin(), got.end());
      for (int64_t j = la; j < lb; ++j)
        if (sc::in_union(o.d[j], j, la, lb)) got.push_back(static_cast<int>(j));
      if ((got != o.unions[t] || !within_k) && rank_path_bad++ < 3)
        ADD_FAILURE() << "tile " << t << ": union from theta's ranks (" << got.size()
                      << " keys) differs from the scan (" << o.unions[t].size() << ")";
    }
  }
  return o;
}

std::string case_name(int n, int64_t sq, int64_t k, int64_t w, int chunks, int wdlog,
                      const std::string& dist) {
  return "n=" + std::to_string(n) + " sq=" + std::to_string(sq) + " k=" + std::to_string(k) +
         " window=" + std::to_string(w) + " chunks=" + std::to_string(chunks) +
         " wdlog=" + std::to_string(wdlog) + " dist=" + dist;
}

// Compares the emulated kernel against the brute force. Returns the number of mismatches
// (reported through gtest, capped).
int check_case(const std::vector<float>& u, int64_t sq, int64_t k, int64_t window, int chunks,
               int wdlog, int tile_q, const std::string& dist, bool linear_cut = false,
               bool walk = false) {
  const int n = static_cast<int>(u.size());
  const std::string name = case_name(n, sq, k, window, chunks, wdlog, dist) +
                           (linear_cut ? " linear cut" : "") + (walk ? " walk" : "");
  EmuOut o = select_emulate(u, sq, k, window, chunks, wdlog, tile_q, linear_cut, walk);
  int bad = 0;
  auto fail = [&](const std::string& what) {
    if (bad++ < 5) ADD_FAILURE() << name << ": " << what;
  };
  sc::RowPlan p = sc::make_plan(n, sq, k, window, n);
  std::vector<std::vector<int>> sel(sq);
  for (int64_t i = 0; i < sq; ++i) {
    const int64_t L = p.row_L(i);
    BruteRow b = brute_row(u, L, k);
    sel[i] = b.sel;
    const std::string at = "row " + std::to_string(i) + " L=" + std::to_string(L);
    if (b.kind == 0) {
      if (!(std::isinf(o.tau[i]) && o.tau[i] < 0 && std::isinf(o.theta_val[i]) &&
            o.theta_val[i] < 0 && o.theta_idx[i] == -1 && o.n_active[i] == 0))
        fail(at + ": trivial row expected, got tau=" + std::to_string(o.tau[i]));
    } else if (b.kind == 1) {
      sel[i].clear();  // NaN rows select nothing (documented)
      if (!(std::isnan(o.tau[i]) && std::isnan(o.theta_val[i]) && o.theta_idx[i] == -1 &&
            o.n_active[i] == 0))
        fail(at + ": NaN row expected, got tau=" + std::to_string(o.tau[i]));
    } else {
      const double tol = 1e-6 * std::fabs(b.tau) + 1e-6;
      if (!(std::fabs(static_cast<double>(o.tau[i]) - b.tau) <= tol))
        fail(at + ": tau " + std::to_string(o.tau[i]) + " vs " + std::to_string(b.tau));
      if (o.theta_idx[i] != b.theta_idx)
        fail(at + ": theta_idx " + std::to_string(o.theta_idx[i]) + " vs " +
             std::to_string(b.theta_idx));
      if (!(o.theta_val[i] == b.theta_val))
        fail(at + ": theta_val " + std::to_string(o.theta_val[i]) + " vs " +
             std::to_string(b.theta_val));
      if (o.n_active[i] != b.n_active)
        fail(at + ": n_active " + std::to_string(o.n_active[i]) + " vs " +
             std::to_string(b.n_active));
    }
  }
  for (size_t t = 0; t < o.unions.size(); ++t) {
    std::vector<char> in(n, 0);
    for (int64_t i = t * tile_q; i < std::min<int64_t>(sq, (t + 1) * tile_q); ++i)
      for (int j : sel[i]) in[j] = 1;
    std::vector<int> want;
    for (int j = 0; j < n; ++j)
      if (in[j]) want.push_back(j);
    if (want != o.unions[t])
      fail("union of tile " + std::to_string(t) + ": " + std::to_string(o.unions[t].size()) +
           " keys vs " + std::to_string(want.size()));
    const int64_t rows = std::min<int64_t>(sq, (t + 1) * tile_q) - t * tile_q;
    if (static_cast<int64_t>(o.unions[t].size()) > std::min<int64_t>(k + rows, n))
      fail("union of tile " + std::to_string(t) + " exceeds k + rows");
    // The attention kernel's n_j (union_rows): a row of the tile for which j is a candidate
    // selects j iff it is one of the first n_j rows.
    std::vector<std::vector<char>> row_sel(static_cast<size_t>(rows), std::vector<char>(n, 0));
    for (int64_t r = 0; r < rows; ++r)
      for (int j : sel[t * tile_q + r]) row_sel[r][j] = 1;
    for (int j : o.unions[t]) {
      const int64_t nj = sc::union_rows(o.d[j], p.lbase + t * tile_q, tile_q);
      for (int64_t r = 0; r < rows; ++r) {
        if (j >= p.row_L(t * tile_q + r)) continue;  // not a candidate of this row
        if ((row_sel[r][j] != 0) != (r < nj))
          fail("tile " + std::to_string(t) + " key " + std::to_string(j) + ": row " +
               std::to_string(t * tile_q + r) + (row_sel[r][j] ? " selects" : " rejects") +
               " it, n_j = " + std::to_string(nj));
      }
    }
  }
  return bad;
}

// ---------------------------------------------------------------------------------------------
// Score generators.
// ---------------------------------------------------------------------------------------------
enum class Dist {
  kNormal,
  kUniform,
  kTies3,
  kTiesInt,
  kSlopeUp,
  kSlopeDown,
  kConst,
  kSignedZero,
  kLarge,
  kNonFinite,
  kCount
};

const char* dist_name(Dist d) {
  switch (d) {
    case Dist::kNormal:
      return "normal";
    case Dist::kUniform:
      return "uniform";
    case Dist::kTies3:
      return "ties3";
    case Dist::kTiesInt:
      return "ties_int";
    case Dist::kSlopeUp:
      return "slope_up";
    case Dist::kSlopeDown:
      return "slope_down";
    case Dist::kConst:
      return "const";
    case Dist::kSignedZero:
      return "signed_zero";
    case Dist::kLarge:
      return "large";
    case Dist::kNonFinite:
      return "nonfinite";
    default:
      return "?";
  }
}

std::vector<float> make_scores(int n, Dist d, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(-3.f, 3.f);
  std::uniform_int_distribution<int> pick3(0, 2);
  std::vector<float> u(n);
  const float slope = std::uniform_real_distribution<float>(0.001f, 0.7f)(rng);
  for (int j = 0; j < n; ++j) {
    switch (d) {
      case Dist::kNormal:
        u[j] = nd(rng);
        break;
      case Dist::kUniform:
        u[j] = ud(rng);
        break;
      case Dist::kTies3: {
        const float v[3] = {-0.5f, 0.25f, 1.0f};
        u[j] = v[pick3(rng)];
        break;
      }
      case Dist::kTiesInt:
        u[j] = static_cast<float>(pick3(rng));
        break;
      case Dist::kSlopeUp:
        u[j] = nd(rng) + slope * j;
        break;
      case Dist::kSlopeDown:
        u[j] = nd(rng) - slope * j;
        break;
      case Dist::kConst:
        u[j] = 0.75f;
        break;
      case Dist::kSignedZero: {
        const float v[3] = {-0.0f, 0.0f, 1.0f};
        u[j] = v[pick3(rng)];
        break;
      }
      case Dist::kLarge:
        u[j] = nd(rng) * 1e5f;
        break;
      case Dist::kNonFinite:
        u[j] = nd(rng);
        break;
      default:
        break;
    }
  }
  if (d == Dist::kNonFinite && n > 0) {
    const float bad[3] = {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()};
    const int cnt = 1 + static_cast<int>(rng() % 3);
    for (int c = 0; c < cnt; ++c) u[rng() % n] = bad[rng() % 3];
  }
  return u;
}

// BSK_SELECT_STRESS=<m> multiplies the random case counts (and reseeds) for soak runs.
int stress() {
  const char* e = std::getenv("BSK_SELECT_STRESS");
  return e ? std::max(1, std::atoi(e)) : 1;
}

int64_t pick(std::mt19937_64& rng, std::initializer_list<int64_t> v) {
  return *(v.begin() + rng() % v.size());
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------
TEST(SelectCoreHelpers, SortKeyOrderAndRoundTrip) {
  const float vals[] = {-1e30f, -3.5f, -1.f, -1e-30f, 0.f, 1e-30f, 0.25f, 1.f, 7.f, 3e38f};
  for (size_t i = 0; i + 1 < sizeof(vals) / sizeof(vals[0]); ++i) {
    EXPECT_LT(sc::sort_key(vals[i]), sc::sort_key(vals[i + 1])) << vals[i];
    EXPECT_EQ(sc::key_value(sc::sort_key(vals[i])), vals[i]);
  }
  EXPECT_EQ(sc::sort_key(-0.0f), sc::sort_key(0.0f));
  EXPECT_EQ(sc::float_bits(sc::key_value(sc::sort_key(-0.0f))), 0u);
}

TEST(SelectCoreHelpers, PrmtSignReplicationAndByteSelect) {
  // The two prmt uses of below_mask_u16: sign-replicated bytes 1, 3, 5, 7, and plain bytes.
  // Bytes 1, 3 of a and 5, 7 (1, 3 of b): 0x7f, 0x80, 0x80, 0x00 -> signs 0, ff, ff, 0.
  EXPECT_EQ(sc::prmt(0x80007fffu, 0x00ff8000u, 0xfdb9u), 0x00ffff00u);
  EXPECT_EQ(sc::prmt(0x11223344u, 0x55667788u, 0x73u), 0x44445511u);
  EXPECT_EQ(sc::prmt(0x11223344u, 0x55667788u, 0x5410u), 0x77883344u);
  EXPECT_EQ(sc::vsub2(0x00010000u, 0x00010001u), 0x0000ffffu);  // no borrow into the high half
}

TEST(SelectCoreHelpers, BelowMaskU16MatchesCompares) {
  std::mt19937 rng(std::random_device{}());
  const uint32_t kMax = 1u << 15;
  for (int it = 0; it < 20000; ++it) {
    uint16_t h[32];
    uint32_t L;
    const int mode = it % 4;
    L = mode == 0 ? 0u : (mode == 1 ? kMax : rng() % (kMax + 1));
    for (int i = 0; i < 32; ++i) {
      // Around L (the boundary), anywhere, or the extremes.
      const uint32_t r = rng();
      uint32_t x = (r & 3) == 0 ? (r >> 2) % kMax : (L + (r >> 2) % 5 + kMax - 2) % kMax;
      if ((r & 63) == 1) x = 0;
      if ((r & 63) == 2) x = kMax - 1;
      h[i] = static_cast<uint16_t>(x);
    }
    uint32_t w[16];
    uint32_t want = 0;
    for (int i = 0; i < 16; ++i) w[i] = h[2 * i] | (static_cast<uint32_t>(h[2 * i + 1]) << 16);
    for (int b = 0; b < 32; ++b) want |= (h[b] < L ? 1u : 0u) << b;
    ASSERT_EQ(sc::below_mask_u16(w, L), want) << "L " << L << " iteration " << it;
  }
}

TEST(SelectCoreHelpers, PaddedU16MasksMatchCompares) {
  // The u16 alive masks on the padded indices (select_host.h's u16_words, as the shared-memory
  // kernel keeps them) against the plain compares: every word, the last partial one included,
  // and L from 0 to n.
  std::mt19937 rng(std::random_device{}());
  for (int n : {1, 31, 33, 100, 4096, 4097, 16384}) {
    std::vector<float> u(n);
    for (float& x : u) x = static_cast<float>(rng() % 64) * 0.25f;  // ties too
    const bsk_select_host::Sorted s = bsk_select_host::sort_keys(u);
    const std::vector<uint32_t> words = bsk_select_host::u16_words(s.idx);
    ASSERT_EQ(static_cast<int>(words.size()), ((n + 31) & ~31) / 2);
    HostKeys keys = s.keys();
    keys.ix16 = words.data();
    std::vector<int> ls;
    for (int L = 0; L<n; L += n> 1000 ? 97 : 1) ls.push_back(L);
    ls.push_back(n);
    for (int L : ls)
      for (int w = 0; 32 * w < n; ++w)
        ASSERT_EQ(keys.alive_mask_u16(w, L), keys.alive_mask_compare(w, L))
            << "n " << n << " L " << L << " word " << w;
  }
}

TEST(SelectCoreHelpers, FixedPointIsExactAndMonotone) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.f, 3.f);
  for (int n : {1, 113, 4097, 70000}) {
    std::vector<float> u(500);
    uint32_t maxabs = 0;
    for (auto& x : u) {
      x = nd(rng);
      maxabs = std::max(maxabs, sc::float_bits(x) & 0x7fffffffu);
    }
    sc::Fixed fx = sc::make_fixed(maxabs, n);
    EXPECT_GE(fx.shift, 20);
    std::sort(u.begin(), u.end());
    for (size_t i = 0; i < u.size(); ++i) {
      int64_t v = sc::to_fixed(u[i], fx);
      EXPECT_LE(std::llabs(v), fx.vmax);
      // Exact for these magnitudes: v == u * 2^shift when u * 2^shift is an integer.
      if (std::fabs(u[i]) > 1e-3f) {
        EXPECT_EQ(static_cast<double>(v), std::ldexp(u[i], fx.shift));
      }
      if (i) {
        EXPECT_LE(sc::to_fixed(u[i - 1], fx), v);
      }
      float back;
      if (sc::fixed_to_float_exact(v, fx, back)) {
        EXPECT_EQ(back, u[i]);
      } else {
        EXPECT_LT(std::fabs(u[i]), 1e-3f);  // only tiny scores need the original
      }
    }
  }
  // Absurd magnitudes saturate instead of overflowing.
  sc::Fixed fx = sc::make_fixed(sc::float_bits(3e38f), 4096);
  EXPECT_EQ(sc::to_fixed(3e38f, fx), fx.vmax);
  EXPECT_EQ(sc::to_fixed(-3e38f, fx), -fx.vmax);
}

TEST(SelectCoreHelpers, PlanCoversRows) {
  for (int64_t n : {1, 5, 113, 4096}) {
    for (int64_t sq : {int64_t{1}, n / 2 + 1, n}) {
      for (int64_t k : {0, 1, 3, 200}) {
        for (int64_t w : {0, 1, 4, 200}) {
          for (int cut = 0; cut < 4; ++cut) {
            const int chunks = cut == 0 ? 1 : (cut == 1 ? 3 : 32);  // cut 3: 32, linear log
            sc::RowPlan p = sc::make_plan(n, sq, k, w, n);
            if (cut == 3) {  // the octave-linear cut of sc::chunk_cost
              p.cost_weight = 4;
              p.cost_cubic = false;
            }
            std::vector<int64_t> bound(chunks + 1);
            const int used = sc::chunk_bounds(p, chunks, bound.data());
            std::vector<int> hit(n + 1, 0);
            for (int c = 0; c < chunks; ++c) {
              ASSERT_GE(bound[c], bound[c + 1]);
              ASSERT_EQ(bound[c] > bound[c + 1], c < used);
              for (int64_t L = bound[c + 1] + 1; L <= bound[c]; ++L) hit[L]++;
            }
            for (int64_t i = 0; i < sq; ++i) {
              int64_t L = p.row_L(i);
              const int64_t p_abs = n - sq + i;
              const int64_t want = w > 0 ? std::max<int64_t>(0, p_abs - w + 1) : p_abs + 1;
              ASSERT_EQ(L, want);
              ASSERT_EQ(hit[L], L > k ? 1 : 0) << "n=" << n << " sq=" << sq << " L=" << L;
            }
            for (int64_t idx = 0; idx < n; ++idx) {
              int m = 0;
              for (int c = 0; c < used; ++c) m += bound[c] > idx;
              ASSERT_EQ(sc::alive_chunks(bound.data(), used, idx), m);
            }
          }
        }
      }
    }
  }
}

// Both cut models are strictly increasing in L (chunk_bound_raw bisects on them) and continuous
// across octaves; the cubic log2 is within 1.1e-3 of the true one.
TEST(SelectCoreHelpers, ChunkCostIsMonotone) {
  for (int64_t k : {0, 1, 256, 1 << 20}) {
    for (bool cubic : {false, true}) {
      const int64_t w = cubic ? 6 : 4;
      int64_t prev = sc::chunk_cost(1, k, w, cubic);
      for (int64_t l = 2; l <= (1 << 18); ++l) {
        const int64_t c = sc::chunk_cost(l, k, w, cubic);
        ASSERT_GT(c, prev) << "l=" << l << " k=" << k << " cubic=" << cubic;
        prev = c;
      }
    }
  }
  for (int64_t l = 1; l <= (1 << 18); l += 7) {
    const double ln_q16 = static_cast<double>(sc::chunk_cost(l, 1, 1, true) - (l << 16)) / 65536.0;
    ASSERT_NEAR(ln_q16, std::log(static_cast<double>(l)), 1.1e-3 * std::log(2.0) + 1e-4)
        << "l=" << l;
  }
}

TEST(SelectCoreTable, QueriesMatchNaivePrefix) {
  std::mt19937_64 rng(11);
  for (int iter = 0; iter < 300; ++iter) {
    const int n = 1 + static_cast<int>(rng() % 300);
    std::vector<float> u = make_scores(n, static_cast<Dist>(rng() % 9), rng);
    Sorted s = sort_keys(u);
    HostKeys keys = s.keys();
    const int chunks = 1 + static_cast<int>(rng() % 32);
    const int64_t sq = 1 + static_cast<int64_t>(rng() % n);
    sc::RowPlan p = sc::make_plan(n, sq, static_cast<int64_t>(rng() % 4), rng() % 5, n);
    std::vector<int64_t> bound(chunks + 1);
    const int used = sc::chunk_bounds(p, chunks, bound.data());
    if (used == 0) continue;
    const int wdlog = 5 + static_cast<int>(rng() % 3);
    Table t = build_table(keys, bound.data(), used, wdlog);
    for (int c = 0; c < used; ++c) {
      const int L = static_cast<int>(bound[c]);
      int cnt = 0;
      int64_t sum = 0;
      for (int r = 0; r <= n; ++r) {
        int qc;
        int64_t qs;
        sc::table_q(keys, row_of(t, c), L, r, qc, qs);
        ASSERT_EQ(qc, cnt) << "n=" << n << " wdlog=" << wdlog << " c=" << c << " r=" << r;
        ASSERT_EQ(qs, sum);
        if (r < n && keys.idx(r) < L) {
          cnt++;
          sum += keys.v(r);
          ASSERT_EQ(sc::table_select(keys, row_of(t, c), L, cnt), r);
        }
      }
    }
  }
}

bool same_cursor(const sc::Cursor& a, const sc::Cursor& b) {
  return a.p == b.p && (a.p < 0 || (a.m == b.m && a.v == b.v));
}

// The regula falsi chunk start finds the same T0, hence the same state, as the bisection.
TEST(SelectCoreSweep, FalsiStartMatchesBisection) {
  std::mt19937_64 rng(77 + stress());
  int cases = 0;
  long evals = 0, bisect = 0;
  for (int iter = 0; iter < 1500 * stress(); ++iter) {
    const int n = static_cast<int>(pick(rng, {2, 3, 9, 64, 113, 500, 1000, 3000}));
    const Dist d = static_cast<Dist>(rng() % static_cast<int>(Dist::kCount));
    std::vector<float> u = make_scores(n, d, rng);
    Sorted s = sort_keys(u);
    HostKeys keys = s.keys();
    const int64_t fnf = s.fnf;
    if (fnf < 2) continue;
    const int64_t k = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(fnf - 1));
    const int L = static_cast<int>(k + 1 + rng() % static_cast<uint64_t>(fnf - k));  // k < L <= fnf
    const int wdlog = static_cast<int>(pick(rng, {5, 6, 7}));
    Table t = table_for_L(keys, L, wdlog);
    sc::Lane a, b;
    sc::init_lane(keys, row_of(t, 0), L, 1, k, s.fx.one, a);
    int ev = 0;
    sc::init_lane_falsi(keys, row_of(t, 0), L, 1, k, s.fx.one, b, &ev);
    const sc::SweepState &x = a.st, &y = b.st;
    ASSERT_TRUE(x.L == y.L && same_cursor(x.th, y.th) && same_cursor(x.p1, y.p1) &&
                same_cursor(x.p2, y.p2) && same_cursor(x.p3, y.p3) && x.ns == y.ns &&
                x.na == y.na && x.ne == y.ne && x.sa == y.sa && x.tn == y.tn && x.td == y.td &&
                x.teq == y.teq && a.lo == b.lo && a.done == b.done && a.acc == b.acc)
        << "n=" << n << " k=" << k << " L=" << L << " dist=" << dist_name(d) << ": T0 ranks "
        << x.p1.p << "/" << x.p2.p << "/" << x.p3.p << " vs " << y.p1.p << "/" << y.p2.p << "/"
        << y.p3.p;
    evals += ev;
    for (int w = n - x.th.p; w > 1; w = (w + 1) / 2) ++bisect;
    cases++;
  }
  EXPECT_GT(cases, 1000 * stress());
  std::printf(
      "[ SelectCoreSweep ] regula falsi starts: %.2f evaluations of f per start "
      "(bisection: ~%.2f)\n",
      double(evals) / cases, double(bisect) / cases);
}

// The core's row at prefix length L from scratch: a one-row chunk from a table for L.
sc::RowOut fresh_row(const HostKeys& keys, const sc::Fixed& fx, int L, int64_t k, int wdlog) {
  Table t = table_for_L(keys, L, wdlog);
  sc::RowOut out{};
  int a, b;
  sc::run_chunk(
      keys, row_of(t, 0), L, L, k, fx, [&](int, const sc::RowOut& r) { out = r; }, [](int, int) {},
      a, b);
  return out;
}

// Every row the tick machine emits (sweeping from L = n down) must come from a state whose
// partition matches a full recount and equal a fresh start at that L.
TEST(SelectCoreSweep, StepsMatchFromScratchAndRecount) {
  std::mt19937_64 rng(12 + stress());
  for (int iter = 0; iter < 400 * stress(); ++iter) {
    const int n = 1 + static_cast<int>(rng() % 200);
    const Dist d = static_cast<Dist>(rng() % 9);
    std::vector<float> u = make_scores(n, d, rng);
    Sorted s = sort_keys(u);
    HostKeys keys = s.keys();
    const int64_t k = static_cast<int64_t>(rng() % (n + 1));
    if (k >= n) continue;
    const int64_t one = s.fx.one;
    const int wdlog = 5 + static_cast<int>(rng() % 2);
    auto fresh = [&](int L) { return fresh_row(keys, s.fx, L, k, wdlog); };
    Table t = table_for_L(keys, n, wdlog);
    sc::Lane ln;
    sc::init_lane(keys, row_of(t, 0), n, static_cast<int>(k) + 1, k, one, ln);
    int emitted = 0, ticks = 0;
    // The state is checked just before the tick that emits its row.
    auto check_state = [&]() {
      const sc::SweepState& st = ln.st;
      const int L = st.L;
      int ns = 0, na = 0, ne = 0;
      int64_t sa = 0;
      for (int r = 0; r < n; ++r) {
        if (keys.idx(r) >= L) continue;
        const int64_t v = keys.v(r);
        const bool sat = v * st.td >= st.tn + st.td * one;
        const bool act = !sat && v * st.td > st.tn;
        const bool eq = v * st.td == st.tn;
        ASSERT_EQ(sat, r < st.p1.p) << dist_name(d) << " n=" << n << " k=" << k << " L=" << L;
        ASSERT_EQ(act, r >= st.p1.p && r < st.p2.p);
        ASSERT_EQ(eq, r >= st.p2.p && r < st.p3.p);
        ns += sat;
        na += act;
        ne += eq;
        if (act) sa += v;
      }
      ASSERT_EQ(ns, st.ns);
      ASSERT_EQ(na, st.na);
      ASSERT_EQ(ne, st.ne);
      ASSERT_EQ(sa, st.sa);
      for (const sc::Cursor* c : {&st.p1, &st.p2, &st.p3}) {
        ASSERT_TRUE(c->p == n || keys.idx(c->p) < L);
        if (c->p < n) {
          ASSERT_EQ(c->v, keys.v(c->p));
          ASSERT_EQ(c->m, keys.alive_mask(c->p >> 5, L));
        }
      }
      if (k > 0) {
        ASSERT_LT(keys.idx(st.th.p), L);
        ASSERT_EQ(st.th.m, keys.alive_mask(st.th.p >> 5, L));
      }
    };
    auto check_row = [&](int L, const sc::RowOut& row) {
      ASSERT_EQ(L, n - emitted);
      emitted++;
      const sc::RowOut f = fresh(L);
      ASSERT_EQ(f.tau, row.tau);
      ASSERT_EQ(f.theta_idx, row.theta_idx);
      ASSERT_EQ(f.n_active, row.n_active);
    };
    int selected = 0;
    while (!ln.done) {
      if (sc::row_ready(keys, ln, one)) {
        check_state();
        if (HasFatalFailure()) return;
      }
      sc::tick(keys, ln, k, s.fx, check_row, [&](int, int) { selected++; });
      ASSERT_LT(++ticks, 100000);
    }
    ASSERT_EQ(emitted, n - k);
    ASSERT_LE(selected, n - k - 1);
  }
}

// tick with the cursor moves as selects (HostKeysCursorSelect, as the shared-memory kernel's
// keys) against the branches (HostKeys): in lockstep from the same start, the same lane state
// after every tick, the same rows and the same selections.
TEST(SelectCoreSweep, CursorSelectsMatchBranches) {
  std::mt19937_64 rng(31 + stress());
  long long ticks = 0;
  for (int iter = 0; iter < 400 * stress(); ++iter) {
    const int n = 1 + static_cast<int>(rng() % 300);
    const Dist d = static_cast<Dist>(rng() % 9);
    std::vector<float> u = make_scores(n, d, rng);
    Sorted s = sort_keys(u);
    const HostKeys kb = s.keys();
    HostKeysCursorSelect ks;
    static_cast<HostKeys&>(ks) = kb;
    static_assert(sc::cursor_select<HostKeysCursorSelect>::value);
    static_assert(!sc::cursor_select<HostKeys>::value);
    const int64_t k = static_cast<int64_t>(rng() % (n + 1));
    if (k >= n) continue;
    const int wdlog = 5 + static_cast<int>(rng() % 2);
    Table t = table_for_L(kb, n, wdlog);
    sc::Lane a, b;
    sc::init_lane(kb, row_of(t, 0), n, static_cast<int>(k) + 1, k, s.fx.one, a);
    b = a;
    std::vector<std::pair<int, sc::RowOut>> rows_a, rows_b;
    std::vector<std::pair<int, int>> sel_a, sel_b;
    // One tick of either keys type, its rows and selections recorded.
    auto step = [&](const auto& keys, sc::Lane& ln, std::vector<std::pair<int, sc::RowOut>>& rows,
                    std::vector<std::pair<int, int>>& sel) {
      sc::tick(
          keys, ln, k, s.fx,
          [&](int L, const sc::RowOut& o) {
            rows.push_back({L, o});
          },
          [&](int r, int L) {
            sel.push_back({r, L});
          });
    };
    while (!a.done) {
      step(kb, a, rows_a, sel_a);
      step(ks, b, rows_b, sel_b);
      ++ticks;
      const char* what = dist_name(d);
      ASSERT_EQ(a.done, b.done) << what << " n=" << n << " k=" << k;
      ASSERT_EQ(a.acc, b.acc);
      ASSERT_EQ(a.mth, b.mth);
      ASSERT_EQ(a.m1, b.m1);
      ASSERT_EQ(a.m2, b.m2);
      ASSERT_EQ(a.m3, b.m3);
      const sc::SweepState &x = a.st, &y = b.st;
      ASSERT_EQ(x.L, y.L);
      for (auto [cx, cy] : {std::pair{&x.th, &y.th}, std::pair{&x.p1, &y.p1},
                            std::pair{&x.p2, &y.p2}, std::pair{&x.p3, &y.p3}}) {
        ASSERT_EQ(cx->p, cy->p) << what << " n=" << n << " k=" << k << " L=" << x.L;
        ASSERT_EQ(cx->m, cy->m);
        ASSERT_EQ(cx->v, cy->v);
      }
      ASSERT_EQ(x.ns, y.ns);
      ASSERT_EQ(x.na, y.na);
      ASSERT_EQ(x.ne, y.ne);
      ASSERT_EQ(x.sa, y.sa);
      ASSERT_EQ(x.tn, y.tn);
      ASSERT_EQ(x.td, y.td);
      ASSERT_EQ(x.teq, y.teq);
      ASSERT_LT(ticks, 100000000LL);
    }
    ASSERT_TRUE(b.done);
    ASSERT_EQ(rows_a.size(), rows_b.size());
    ASSERT_EQ(static_cast<int64_t>(rows_a.size()), n - k);
    for (size_t i = 0; i < rows_a.size(); ++i) {
      ASSERT_EQ(rows_a[i].first, rows_b[i].first);
      ASSERT_EQ(sc::float_bits(rows_a[i].second.tau), sc::float_bits(rows_b[i].second.tau));
      ASSERT_EQ(rows_a[i].second.theta_idx, rows_b[i].second.theta_idx);
      ASSERT_EQ(rows_a[i].second.n_active, rows_b[i].second.n_active);
    }
    ASSERT_EQ(sel_a, sel_b);
  }
  ASSERT_GT(ticks, 0);
}

// The row-ascending walk (sparsek_select_walk.h): every row from L = k + 1 up to the first
// non-finite key equals the core's from-scratch row (tau bit for bit, theta, n_active) and the
// brute force's theta and n_active, and theta's departures match the brute-force selections.
TEST(SelectWalk, RowsMatchFreshStartsAndBrute) {
  std::mt19937_64 rng(77 + stress());
  int rows = 0;
  long long steps = 0;
  for (int iter = 0; iter < 400 * stress(); ++iter) {
    const int n = 1 + static_cast<int>(rng() % 200);
    const Dist d = static_cast<Dist>(rng() % static_cast<int>(Dist::kCount));
    std::vector<float> u = make_scores(n, d, rng);
    Sorted s = sort_keys(u);
    HostKeys keys = s.keys();
    const int64_t k = static_cast<int64_t>(rng() % (n + 1));
    const int lend = static_cast<int>(std::min<int64_t>(n, s.fnf));  // finite prefixes only
    if (k >= lend) continue;
    auto fresh = [&](int L) { return fresh_row(keys, s.fx, L, k, 5); };
    std::vector<uint32_t> mask((n + 31) / 32, 0u);
    const int l0 = static_cast<int>(k) + 1;
    for (int j = 0; j < l0; ++j) mask[keys.pos(j) >> 5] |= 1u << (keys.pos(j) & 31);
    sc::WalkState st;
    sc::walk_start(keys, mask.data(), l0, k, s.fx, st);
    std::vector<int> last(n, -1);  // the last L at which each key left theta's set
    for (int L = l0;; ++L) {
      ASSERT_EQ(st.L, L);
      const sc::RowOut w = sc::walk_row(keys, mask.data(), st, k, s.fx);
      const sc::RowOut f = fresh(L);
      const BruteRow b = brute_row(u, L, k);
      const std::string at = std::string(dist_name(d)) + " n=" + std::to_string(n) +
                             " k=" + std::to_string(k) + " L=" + std::to_string(L);
      ASSERT_EQ(sc::float_bits(w.tau), sc::float_bits(f.tau)) << at << " " << w.tau << " " << f.tau;
      ASSERT_EQ(w.theta_idx, f.theta_idx) << at;
      ASSERT_EQ(w.theta_idx, b.theta_idx) << at;
      ASSERT_EQ(w.n_active, f.n_active) << at;
      ASSERT_EQ(w.n_active, b.n_active) << at;
      rows++;
      if (L == lend) break;
      sc::walk_add(keys, mask.data(), k, s.fx, st, [&](int r, int lq) { last[keys.idx(r)] = lq; });
    }
    // A key that left at L was selected at L and not at L + 1.
    for (int j = 0; j < n; ++j) {
      if (last[j] < 0) continue;
      const BruteRow in = brute_row(u, last[j], k), out = brute_row(u, last[j] + 1, k);
      ASSERT_NE(std::find(in.sel.begin(), in.sel.end(), j), in.sel.end());
      ASSERT_EQ(std::find(out.sel.begin(), out.sel.end(), j), out.sel.end());
    }
    steps += st.steps;
  }
  EXPECT_GT(rows, 5000 * stress());
  std::printf("[ SelectWalk ] %d rows, %lld breakpoints crossed\n", rows, steps);
}

// A walk started from the core's own start (init_lane at L, ticks to its row, walk_from_sweep),
// as a chunk of a kernel would start, then walked up: every row equals the from-scratch row.
TEST(SelectWalk, StartsFromTheCoreState) {
  std::mt19937_64 rng(78 + stress());
  int rows = 0;
  for (int iter = 0; iter < 600 * stress(); ++iter) {
    const int n = 1 + static_cast<int>(rng() % 300);
    const Dist d = static_cast<Dist>(rng() % static_cast<int>(Dist::kCount));
    std::vector<float> u = make_scores(n, d, rng);
    Sorted s = sort_keys(u);
    HostKeys keys = s.keys();
    const int64_t k = static_cast<int64_t>(rng() % (n + 1));
    const int lend = static_cast<int>(std::min<int64_t>(n, s.fnf));
    if (k >= lend) continue;
    const int wdlog = 5 + static_cast<int>(rng() % 2);
    auto fresh = [&](int L) { return fresh_row(keys, s.fx, L, k, wdlog); };
    const int l0 = static_cast<int>(k) + 1 + static_cast<int>(rng() % (lend - k));
    Table t = table_for_L(keys, l0, wdlog);
    sc::Lane ln;
    sc::init_lane(keys, row_of(t, 0), l0, l0, k, s.fx.one, ln);
    int ticks = 0;
    while (!sc::row_ready(keys, ln, s.fx.one)) {
      sc::tick(
          keys, ln, k, s.fx, [](int, const sc::RowOut&) {}, [](int, int) {});
      ASSERT_LT(++ticks, 100000);
    }
    ASSERT_EQ(ln.st.L, l0);
    std::vector<uint32_t> mask((n + 31) / 32, 0u);
    for (int j = 0; j < l0; ++j) mask[keys.pos(j) >> 5] |= 1u << (keys.pos(j) & 31);
    sc::WalkState st;
    sc::walk_from_sweep(keys, mask.data(), ln.st, k, s.fx, st);
    const int lstop = std::min(lend, l0 + 1 + static_cast<int>(rng() % 64));
    for (int L = l0;; ++L) {
      const sc::RowOut w = sc::walk_row(keys, mask.data(), st, k, s.fx);
      const sc::RowOut f = fresh(L);
      const std::string at = std::string(dist_name(d)) + " n=" + std::to_string(n) +
                             " k=" + std::to_string(k) + " l0=" + std::to_string(l0) +
                             " L=" + std::to_string(L);
      ASSERT_EQ(sc::float_bits(w.tau), sc::float_bits(f.tau)) << at;
      ASSERT_EQ(w.theta_idx, f.theta_idx) << at;
      ASSERT_EQ(w.n_active, f.n_active) << at;
      rows++;
      if (L >= lstop) break;
      sc::walk_add(keys, mask.data(), k, s.fx, st, [](int, int) {});
    }
  }
  EXPECT_GT(rows, 5000 * stress());
}

// Random small heads of every score family through check_case (chunks, table words and tiles
// varied too): the core's sweep with the linear cut on odd iterations, or the walked chunks.
// Returns the number of cases run, -1 after the first failing one.
int random_small_cases(uint64_t seed, int iters, bool walk) {
  std::mt19937_64 rng(seed);
  int cases = 0;
  for (int iter = 0; iter < iters; ++iter) {
    const int n = static_cast<int>(pick(rng, {1, 2, 3, 5, 8, 17, 33, 64, 113, 150, 257}));
    const Dist d = static_cast<Dist>(rng() % static_cast<int>(Dist::kCount));
    std::vector<float> u = make_scores(n, d, rng);
    const int64_t k =
        pick(rng, {0, 1, 2, 7, 16, n - 1, n, n + 5, static_cast<int64_t>(rng() % (n + 1))});
    const int64_t w = pick(rng, {0, 1, 3, 16, n, n + 3, static_cast<int64_t>(rng() % (n + 1))});
    const int64_t sq = pick(rng, {1, n, 1 + static_cast<int64_t>(rng() % n)});
    if (k < 0 || (k == 0 && w == 0)) continue;
    const int chunks = static_cast<int>(pick(rng, {1, 2, 5, 32}));
    const int wdlog = static_cast<int>(pick(rng, {5, 6, 7}));
    const int tile_q = static_cast<int>(pick(rng, {1, 3, 16, 128}));
    if (check_case(u, sq, k, w, chunks, wdlog, tile_q, dist_name(d), !walk && iter % 2 == 1, walk) >
        0)
      return -1;
    cases++;
  }
  return cases;
}

TEST(SelectCoreBrute, RandomSmallCases) {
  EXPECT_GT(random_small_cases(2024 + stress(), 2500 * stress(), false), 2000 * stress());
}

// The kernel glue with walked chunks (select_emulate(..., walk = true)): rows, D_j, unions and
// n_j against the brute force, on the families of the core's own brute-force tests.
TEST(SelectWalk, EmulatedChunksMatchBrute) {
  EXPECT_GT(random_small_cases(79 + stress(), 1500 * stress(), true), 1200 * stress());
  std::mt19937_64 rng(80);
  for (Dist d : {Dist::kNormal, Dist::kTies3, Dist::kTiesInt, Dist::kConst, Dist::kNonFinite}) {
    std::vector<float> u = make_scores(1000, d, rng);
    EXPECT_EQ(check_case(u, 1000, 64, 100, 32, 6, 128, dist_name(d), false, true), 0);
    EXPECT_EQ(check_case(u, 1000, 7, 0, 32, 5, 64, dist_name(d), false, true), 0);
  }
}

TEST(SelectCoreBrute, Size1000AllRows) {
  std::mt19937_64 rng(99);
  for (Dist d : {Dist::kNormal, Dist::kTies3, Dist::kTiesInt, Dist::kSlopeUp, Dist::kConst,
                 Dist::kNonFinite}) {
    std::vector<float> u = make_scores(1000, d, rng);
    EXPECT_EQ(check_case(u, 1000, 64, 100, 32, 6, 128, dist_name(d)), 0);
    EXPECT_EQ(check_case(u, 1000, 7, 0, 32, 5, 64, dist_name(d)), 0);
    EXPECT_EQ(check_case(u, 1000, 64, 100, 32, 6, 128, dist_name(d), true), 0);
  }
}

TEST(SelectCoreBrute, Size4097) {
  std::mt19937_64 rng(4097);
  // Full rows once (the brute force is O(S^2 log S)); a tail of rows for the other shapes.
  std::vector<float> u = make_scores(4097, Dist::kNormal, rng);
  EXPECT_EQ(check_case(u, 4097, 256, 256, 32, 6, 128, "normal"), 0);
  for (Dist d : {Dist::kTies3, Dist::kSlopeUp, Dist::kSlopeDown, Dist::kLarge, Dist::kNonFinite}) {
    u = make_scores(4097, d, rng);
    EXPECT_EQ(check_case(u, 300, 256, 256, 32, 6, 128, dist_name(d)), 0);
    EXPECT_EQ(check_case(u, 129, 1, 0, 32, 6, 128, dist_name(d)), 0);
    EXPECT_EQ(check_case(u, 77, 4000, 33, 32, 6, 16, dist_name(d)), 0);
  }
}

TEST(SelectCoreBrute, EdgeShapes) {
  std::mt19937_64 rng(5);
  // k = 0 (window > 0), k > S, window > S, S = 1, all ties, all rows trivial.
  struct C {
    int n;
    int64_t sq, k, w;
  } cs[] = {{1, 1, 0, 1},       {1, 1, 1, 0},      {1, 1, 5, 3},       {2, 2, 1, 0},
            {2, 2, 0, 1},       {113, 113, 0, 1},  {113, 113, 0, 7},   {113, 113, 200, 0},
            {113, 113, 1, 500}, {113, 50, 112, 0}, {113, 113, 113, 0}, {64, 64, 63, 0},
            {64, 64, 1, 63}};
  for (const auto& c : cs) {
    for (Dist d :
         {Dist::kNormal, Dist::kConst, Dist::kTiesInt, Dist::kSignedZero, Dist::kNonFinite}) {
      std::vector<float> u = make_scores(c.n, d, rng);
      EXPECT_EQ(check_case(u, c.sq, c.k, c.w, 32, 5, 3, dist_name(d)), 0);
      EXPECT_EQ(check_case(u, c.sq, c.k, c.w, 1, 7, 128, dist_name(d)), 0);
    }
  }
}

// The monotonicity facts the algorithm rests on (SPEC section 1), checked on the brute force.
TEST(SelectCoreBrute, MonotonicityProperties) {
  std::mt19937_64 rng(31);
  for (int iter = 0; iter < 200; ++iter) {
    const int n = 2 + static_cast<int>(rng() % 150);
    std::vector<float> u = make_scores(n, static_cast<Dist>(rng() % 8), rng);
    const int64_t k = 1 + static_cast<int64_t>(rng() % (n - 1));
    double prev_tau = -INFINITY;
    std::vector<int> prev_sel;
    for (int64_t L = k + 1; L <= n; ++L) {
      BruteRow b = brute_row(u, L, k);
      ASSERT_GE(b.tau, prev_tau);
      std::vector<int> s = b.sel, ps = prev_sel;
      std::sort(s.begin(), s.end());
      std::sort(ps.begin(), ps.end());
      ps.push_back(static_cast<int>(L - 1));
      std::sort(ps.begin(), ps.end());
      if (L > k + 1) {
        ASSERT_TRUE(std::includes(ps.begin(), ps.end(), s.begin(), s.end()));
      }
      prev_tau = b.tau;
      prev_sel = b.sel;
    }
  }
}

}  // namespace
