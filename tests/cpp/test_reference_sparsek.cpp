// Tests of the SparseK CPU references (src/reference/sparsek_ref.cpp) against brute force from
// the definitions (brute_force.h), structural properties, finite differences and edge cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "brute_force.h"
#include "bsk/reference.h"

namespace {

using bsk::ref::AttnShape;
using bsk::ref::SparseKQuery;
using namespace bsk_test;

struct OpCase {
  ScoreKind kind = ScoreKind::kNormal;
  int64_t B = 1, Sk = 1, Hkv = 1, Sq = 1, k = 0, window = 0;
  std::vector<double> u;
  std::string str() const {
    std::ostringstream o;
    o << kind_name(kind) << " B" << B << " Sk" << Sk << " Hkv" << Hkv << " Sq" << Sq << " k" << k
      << " w" << window;
    return o.str();
  }
};

int64_t pick_k_or_window(std::mt19937_64& rng, int64_t Sk) {
  switch (rand_int(rng, 0, 6)) {
    case 0:
      return 0;
    case 1:
      return 1;
    case 2:
      return std::max<int64_t>(Sk - 1, 0);
    case 3:
      return Sk;
    case 4:
      return Sk + rand_int(rng, 1, 5);
    default:
      return rand_int(rng, 1, std::max<int64_t>(Sk, 1));
  }
}

// A random operator case; nonfinite: chance of planting NaN / +-inf scores.
OpCase random_op_case(std::mt19937_64& rng, int64_t max_sk, double nonfinite, bool attention) {
  OpCase c;
  c.kind = static_cast<ScoreKind>(rand_int(rng, 0, static_cast<int>(ScoreKind::kCount) - 1));
  c.B = rand_int(rng, 1, 2);
  c.Hkv = rand_int(rng, 1, 3);
  c.Sk = rand_int(rng, 0, 7) == 0 ? rand_int(rng, 1, 3) : rand_int(rng, 1, max_sk);
  c.Sq = rand_int(rng, 0, 1) ? c.Sk : rand_int(rng, 1, c.Sk);
  c.k = pick_k_or_window(rng, c.Sk);
  c.window = pick_k_or_window(rng, c.Sk);
  if (attention && c.k == 0 && c.window == 0) c.window = 1;  // the API forbids both 0
  c.u = make_scores(c.kind, c.B, c.Sk, c.Hkv, rng);
  if (std::uniform_real_distribution<double>(0, 1)(rng) < nonfinite) {
    const double bad[3] = {kNaN, kInf, -kInf};
    for (int t = rand_int(rng, 1, 2); t > 0; --t)
      c.u[rand_int(rng, 0, static_cast<int64_t>(c.u.size()) - 1)] = bad[rand_int(rng, 0, 2)];
  }
  return c;
}

std::vector<SparseKQuery> run_operator(const OpCase& c) {
  std::vector<SparseKQuery> info(static_cast<size_t>(c.B * c.Hkv * c.Sq));
  bsk::ref::sparsek_operator(c.B, c.Sk, c.Hkv, c.Sq, c.u.data(), c.k, c.window, info.data());
  return info;
}

bool same_double(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

// One row of the operator against the brute force.
::testing::AssertionResult row_matches(const SparseKQuery& got, const BruteRow& want,
                                       bool check_bisect) {
  auto fail = [&](const char* what) {
    return ::testing::AssertionFailure()
           << what << ": got tau=" << got.tau << " theta=(" << got.theta_val << "," << got.theta_idx
           << ") n_cand=" << got.n_cand << " n_active=" << got.n_active << "; want tau=" << want.tau
           << " (bisection " << want.tau_bisect << ") theta=(" << want.theta_val << ","
           << want.theta_idx << ") n_cand=" << want.n_cand << " n_active=" << want.n_active;
  };
  if (got.n_cand != want.n_cand) return fail("n_cand");
  if (std::isnan(want.tau) || std::isinf(want.tau)) {
    if (!same_double(got.tau, want.tau)) return fail("tau");
  } else if (!(std::abs(got.tau - want.tau) <= 1e-9 * std::max(1.0, std::abs(want.tau)))) {
    return fail("tau");
  }
  if (check_bisect && std::isfinite(want.tau) &&
      !(std::abs(want.tau_bisect - want.tau) <= 1e-9 * std::max(1.0, std::abs(want.tau))))
    return fail("brute force: enumeration and bisection disagree");
  if (!same_double(got.theta_val, want.theta_val) || got.theta_idx != want.theta_idx)
    return fail("theta");
  if (got.n_active != want.n_active) return fail("n_active");
  return ::testing::AssertionSuccess();
}

// Every row of a case against the brute force; bisect_every: the brute force's own bisection
// check on every n-th row.
void check_operator_case(const OpCase& c, int64_t bisect_every = 1) {
  SCOPED_TRACE(c.str());
  const auto info = run_operator(c);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hkv; ++h) {
      const auto uh = head_scores(c.u, b, c.Sk, c.Hkv, h);
      for (int64_t i = 0; i < c.Sq; ++i) {
        const int64_t p = c.Sk - c.Sq + i;
        const bool bis = i % bisect_every == 0;
        const BruteRow want = brute_row(uh, p, c.k, c.window, bis);
        ASSERT_TRUE(row_matches(info[(b * c.Hkv + h) * c.Sq + i], want, bis))
            << "b=" << b << " h=" << h << " i=" << i << " p=" << p;
      }
    }
}

// ---------------------------------------------------------------------------------------------
// The operator.
// ---------------------------------------------------------------------------------------------
TEST(RefSparseK, OperatorMatchesBruteForceRandom) {
  std::mt19937_64 rng(0x5eed0001);
  int dead_rows_seen = 0, computed_rows_seen = 0;
  for (int rep = 0; rep < 1200; ++rep) {
    const bool big = rep % 10 == 9;
    OpCase c = random_op_case(rng, big ? 300 : 48, 0.12, false);
    check_operator_case(c, big ? 7 : 1);
    if (HasFatalFailure()) return;
    for (const auto& r : run_operator(c)) {
      dead_rows_seen += std::isnan(r.tau);
      computed_rows_seen += std::isfinite(r.tau);
    }
  }
  // The generator must reach both regimes.
  EXPECT_GT(dead_rows_seen, 100);
  EXPECT_GT(computed_rows_seen, 10000);
}

TEST(RefSparseK, OperatorExactKinks) {
  // f(t) = clip(1.5 - t) + clip(0.5 - t) + clip(-t) == 1 exactly at t = 0.5, where 1.5 is
  // saturated and 0.5 just leaves: tau = 0.5, nothing active.
  std::vector<double> u = {1.5, 0.5, 0.0};
  std::vector<SparseKQuery> info(3);
  bsk::ref::sparsek_operator(1, 3, 1, 3, u.data(), 1, 0, info.data());
  EXPECT_EQ(info[0].tau, -kInf);
  EXPECT_EQ(info[0].theta_idx, -1);
  EXPECT_EQ(info[1].tau, 0.5);  // {1.5, 0.5}: the gap case, tau = the (k+1)-th score
  EXPECT_EQ(info[2].tau, 0.5);
  EXPECT_EQ(info[2].n_active, 0);
  EXPECT_EQ(info[2].theta_idx, 0);
  EXPECT_EQ(info[2].theta_val, 1.5);

  // Equal scores: tau = 0.5 - 2/5, all five active; ties go to the larger index.
  std::vector<double> c(5, 0.5);
  std::vector<SparseKQuery> ic(5);
  bsk::ref::sparsek_operator(1, 5, 1, 5, c.data(), 2, 0, ic.data());
  EXPECT_NEAR(ic[4].tau, 0.1, 1e-15);
  EXPECT_EQ(ic[4].n_active, 5);
  EXPECT_EQ(ic[4].theta_idx, 3);
  EXPECT_EQ(ic[2].theta_idx, 1);  // p = 2: {2, 1} selected

  // The gap case with huge saturated scores: no sum can resolve 0.3 next to 2e20, so tau must
  // come from the exact flat-stretch test f(R) == k, not from the piece formula.
  std::vector<double> g = {1e20, 1e20, 0.3, -5.0};
  std::vector<SparseKQuery> ig(4);
  bsk::ref::sparsek_operator(1, 4, 1, 4, g.data(), 2, 0, ig.data());
  for (int p = 2; p < 4; ++p) {
    EXPECT_EQ(ig[p].tau, 0.3) << p;
    EXPECT_EQ(ig[p].n_active, 0) << p;
    EXPECT_EQ(ig[p].theta_idx, 0) << p;  // (1e20, 1) > (1e20, 0): key 0 is the 2nd
  }

  // k == 0: tau = max u, theta = (+inf, -1), nothing active.
  std::vector<double> z = {0.25, 2.0, -1.0};
  std::vector<SparseKQuery> iz(3);
  bsk::ref::sparsek_operator(1, 3, 1, 3, z.data(), 0, 0, iz.data());
  for (int p = 0; p < 3; ++p) {
    EXPECT_EQ(iz[p].tau, p == 0 ? 0.25 : 2.0);
    EXPECT_EQ(iz[p].theta_val, kInf);
    EXPECT_EQ(iz[p].theta_idx, -1);
    EXPECT_EQ(iz[p].n_active, 0);
  }
}

TEST(RefSparseK, OperatorNonFiniteConventions) {
  // k = 1, window = 2: n_p = p - 1. Row p = 2 has C = {0} (n <= k, scores unused); row p = 3
  // has C = {0, 1} with a NaN: a NaN row. Row p = 4 too (the NaN stays a candidate).
  std::vector<double> u = {0.3, kNaN, 0.1, 0.2, 0.7};
  std::vector<SparseKQuery> info(5);
  bsk::ref::sparsek_operator(1, 5, 1, 5, u.data(), 1, 2, info.data());
  EXPECT_EQ(info[0].n_cand, 0);
  EXPECT_EQ(info[2].tau, -kInf);
  for (int p = 3; p < 5; ++p) {
    EXPECT_TRUE(std::isnan(info[p].tau)) << p;
    EXPECT_TRUE(std::isnan(info[p].theta_val)) << p;
    EXPECT_EQ(info[p].theta_idx, -1);
    EXPECT_EQ(info[p].n_active, 0);
  }
  // A non-finite score in a row with n_p <= k is harmless; in the selection it is ordered as
  // +inf (NaN) and keeps gate 1.
  std::vector<int64_t> idx(5 * 3);
  std::vector<double> gate(5 * 3);
  bsk::ref::sparsek_selection(1, 5, 1, 5, u.data(), 3, 0, idx.data(), gate.data());
  EXPECT_EQ(idx[1 * 3 + 0], 1);  // row p = 1: C = {0, NaN}: NaN first
  EXPECT_EQ(idx[1 * 3 + 1], 0);
  EXPECT_EQ(idx[1 * 3 + 2], -1);
  EXPECT_EQ(gate[1 * 3 + 0], 1.0);
  EXPECT_EQ(gate[1 * 3 + 2], 0.0);
  for (int t = 0; t < 3; ++t) {  // row p = 3: n = 4 > 3 with the NaN: nothing selected
    EXPECT_EQ(idx[3 * 3 + t], -1);
    EXPECT_TRUE(std::isnan(gate[3 * 3 + t]));
  }
  // -inf and +inf make NaN rows too.
  for (double bad : {kInf, -kInf}) {
    std::vector<double> w = {0.3, 0.2, bad, 0.1};
    std::vector<SparseKQuery> iw(4);
    bsk::ref::sparsek_operator(1, 4, 1, 4, w.data(), 1, 0, iw.data());
    EXPECT_TRUE(std::isfinite(iw[1].tau));
    EXPECT_TRUE(std::isnan(iw[2].tau));
    EXPECT_TRUE(std::isnan(iw[3].tau));
  }
}

// ---------------------------------------------------------------------------------------------
// Selection.
// ---------------------------------------------------------------------------------------------
void check_selection_case(const OpCase& c, int64_t row_step = 1) {
  SCOPED_TRACE(c.str());
  const int64_t kk = c.k;
  std::vector<int64_t> idx(static_cast<size_t>(c.B * c.Sq * c.Hkv * kk), 7);
  std::vector<double> gate(idx.size(), 7.0);
  bsk::ref::sparsek_selection(c.B, c.Sk, c.Hkv, c.Sq, c.u.data(), c.k, c.window, idx.data(),
                              gate.data());
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hkv; ++h) {
      const auto uh = head_scores(c.u, b, c.Sk, c.Hkv, h);
      for (int64_t i = 0; i < c.Sq; i += row_step) {
        const BruteRow want = brute_row(uh, c.Sk - c.Sq + i, c.k, c.window, false);
        const int64_t base = ((b * c.Sq + i) * c.Hkv + h) * kk;
        for (int64_t t = 0; t < kk; ++t) {
          const bool has = t < static_cast<int64_t>(want.sel.size());
          const int64_t wi = has ? want.sel[t] : -1;
          const double wg = has ? want.gate[t] : (want.dead ? kNaN : 0.0);
          ASSERT_EQ(idx[base + t], wi) << "b=" << b << " h=" << h << " i=" << i << " t=" << t;
          ASSERT_EQ(first_mismatch(&gate[base + t], &wg, 1, 0.0, 1e-9), -1)
              << "gate " << gate[base + t] << " vs " << wg << " b=" << b << " h=" << h << " i=" << i
              << " t=" << t;
        }
      }
    }
}

TEST(RefSparseK, SelectionMatchesBruteForceRandom) {
  std::mt19937_64 rng(0x5eed0002);
  for (int rep = 0; rep < 500; ++rep) {
    check_selection_case(random_op_case(rng, rep % 10 == 9 ? 200 : 40, 0.12, false));
    if (HasFatalFailure()) return;
  }
}

// ---------------------------------------------------------------------------------------------
// Structural properties (SPEC section 1).
// ---------------------------------------------------------------------------------------------
TEST(RefSparseK, Properties) {
  std::mt19937_64 rng(0x5eed0003);
  int64_t unsaturated_rows = 0, ranges_checked = 0;
  for (int rep = 0; rep < 200; ++rep) {
    OpCase c = random_op_case(rng, 160, 0.0, false);
    if (rep % 4 == 0) c.Sq = c.Sk;  // every position, so consecutive rows are consecutive p
    c.k = std::min<int64_t>(c.k, c.Sk + 1);
    SCOPED_TRACE(c.str());
    const auto info = run_operator(c);
    const int64_t kk = c.k;
    std::vector<int64_t> idx(static_cast<size_t>(c.B * c.Sq * c.Hkv * kk));
    std::vector<double> gate(idx.size());
    bsk::ref::sparsek_selection(c.B, c.Sk, c.Hkv, c.Sq, c.u.data(), c.k, c.window, idx.data(),
                                gate.data());
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.Hkv; ++h) {
        const auto uh = head_scores(c.u, b, c.Sk, c.Hkv, h);
        std::vector<std::set<int64_t>> sel(static_cast<size_t>(c.Sq));
        std::vector<char> dropped(static_cast<size_t>(c.Sk), 0);
        std::vector<std::vector<int64_t>> a_rows(static_cast<size_t>(c.Sk));
        for (int64_t i = 0; i < c.Sq; ++i) {
          const SparseKQuery& r = info[(b * c.Hkv + h) * c.Sq + i];
          const int64_t base = ((b * c.Sq + i) * c.Hkv + h) * kk, n = r.n_cand;
          double gsum = 0;
          for (int64_t t = 0; t < kk; ++t)
            if (idx[base + t] >= 0) {
              sel[i].insert(idx[base + t]);
              gsum += gate[base + t];
            }
          ASSERT_EQ(static_cast<int64_t>(sel[i].size()), std::min(kk, n)) << "i=" << i;
          // Membership through theta alone.
          for (int64_t j = 0; j < n; ++j) {
            const bool by_theta = uh[j] > r.theta_val || (uh[j] == r.theta_val && j >= r.theta_idx);
            ASSERT_EQ(by_theta, sel[i].count(j) == 1) << "i=" << i << " j=" << j;
          }
          if (n > kk) {
            // f(tau) == k over all candidates; Sel's gates sum to k unless active candidates
            // beyond the k-th share the mass.
            double fsum = 0;
            int64_t above = 0;
            for (int64_t j = 0; j < n; ++j) {
              fsum += std::clamp(uh[j] - r.tau, 0.0, 1.0);
              above += uh[j] > r.tau;
            }
            ASSERT_NEAR(fsum, double(kk), 1e-9 * (1.0 + kk)) << "i=" << i;
            ASSERT_LE(gsum, double(kk) + 1e-9 * (1.0 + kk));
            if (above <= kk) {
              ASSERT_NEAR(gsum, double(kk), 1e-9 * (1.0 + kk)) << "i=" << i;
            }
            unsaturated_rows += r.n_active > 0;
            for (int64_t j = 0; j < n; ++j)
              if (uh[j] > r.tau && uh[j] < r.tau + 1.0) a_rows[j].push_back(i);
          } else {
            ASSERT_EQ(gsum, double(n));
          }
          // A key that was a candidate and not selected never returns.
          for (int64_t j = 0; j < n; ++j) {
            if (sel[i].count(j)) {
              ASSERT_FALSE(dropped[j]) << "key " << j << " returned, i=" << i;
            } else {
              dropped[j] = 1;
            }
          }
          if (i == 0) continue;
          const SparseKQuery& prev = info[(b * c.Hkv + h) * c.Sq + i - 1];
          // tau non-decreasing once n_p > k.
          if (prev.n_cand > kk) {
            ASSERT_GE(r.tau, prev.tau - 1e-12 * (1.0 + std::abs(prev.tau))) << "i=" << i;
          }
          // Sel_{p+1} ⊆ Sel_p ∪ {newest candidates}.
          for (int64_t j : sel[i])
            ASSERT_TRUE(sel[i - 1].count(j) || j >= prev.n_cand) << "i=" << i << " j=" << j;
        }
        // The union over T consecutive rows has at most k + T keys.
        for (int64_t T : {1, 2, 3, 8, 64}) {
          for (int64_t i0 = 0; i0 < c.Sq; i0 += T) {
            std::set<int64_t> uni;
            for (int64_t i = i0; i < std::min(c.Sq, i0 + T); ++i)
              uni.insert(sel[i].begin(), sel[i].end());
            ASSERT_LE(static_cast<int64_t>(uni.size()), kk + T) << "T=" << T << " i0=" << i0;
            // What the attention kernel's tile split relies on (the selection's union_old): at
            // most k union keys are candidates of the block's first row (all of them are
            // selected by that row), and the others lie in [L0, L0 + T - 1), the first window
            // tile's keys.
            const int64_t l0 = info[(b * c.Hkv + h) * c.Sq + i0].n_cand;
            int64_t old = 0;
            for (int64_t j : uni) {
              old += j < l0;
              if (j < l0) ASSERT_TRUE(sel[i0].count(j)) << "T=" << T << " i0=" << i0 << " j=" << j;
              ASSERT_LT(j, l0 + T - 1) << "T=" << T << " i0=" << i0;
            }
            ASSERT_LE(old, kk) << "T=" << T << " i0=" << i0;
          }
        }
        // {p : j in A_p} is a contiguous range of rows (what the backward kernels rely on).
        for (const auto& rows : a_rows) {
          if (rows.empty()) continue;
          ++ranges_checked;
          ASSERT_EQ(rows.back() - rows.front() + 1, static_cast<int64_t>(rows.size()));
        }
      }
  }
  EXPECT_GT(unsaturated_rows, 1000);
  EXPECT_GT(ranges_checked, 1000);
}

// The sm_90a kernels' membership test relies on this: ordering the rows' thresholds with "every
// candidate selected" (tau = -inf) lowest, NaN rows highest and (theta_val, theta_idx) in
// between, the threshold never decreases from one row to the next, so each key is selected on
// one contiguous range of rows ([j + 1, D_j] in prefix length), and the selection can hand the
// attention kernel one row count n_j per key of a query tile's union (sc::union_rows).
TEST(RefSparseK, ThresholdOrderNonDecreasingAlongRows) {
  std::mt19937_64 rng(0x5eed0009);
  auto cls = [](const SparseKQuery& r) { return r.tau == -kInf ? 0 : std::isnan(r.tau) ? 2 : 1; };
  auto less = [&](const SparseKQuery& a, const SparseKQuery& b) {
    if (cls(a) != cls(b)) return cls(a) < cls(b);
    if (cls(a) != 1) return false;
    if (a.theta_val != b.theta_val) return a.theta_val < b.theta_val;
    return a.theta_idx < b.theta_idx;
  };
  int64_t pairs = 0, class_changes = 0;
  for (int rep = 0; rep < 600; ++rep) {
    const OpCase c = random_op_case(rng, rep % 10 == 9 ? 300 : 60, 0.12, false);
    SCOPED_TRACE(c.str());
    const auto info = run_operator(c);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.Hkv; ++h)
        for (int64_t i = 1; i < c.Sq; ++i) {
          const SparseKQuery& prev = info[(b * c.Hkv + h) * c.Sq + i - 1];
          const SparseKQuery& cur = info[(b * c.Hkv + h) * c.Sq + i];
          ASSERT_FALSE(less(cur, prev)) << "b=" << b << " h=" << h << " i=" << i;
          ++pairs;
          class_changes += cls(cur) != cls(prev);
        }
  }
  EXPECT_GT(pairs, 10000);
  EXPECT_GT(class_changes, 100);  // the generator reaches both transitions
}

// ---------------------------------------------------------------------------------------------
// Attention forward.
// ---------------------------------------------------------------------------------------------
struct AttnCase {
  OpCase op;
  AttnShape s;
  double scale = 0.5;
  std::vector<double> q, k, v;
};

AttnCase random_attn_case(std::mt19937_64& rng, int64_t max_sk, double nonfinite) {
  AttnCase a;
  a.op = random_op_case(rng, max_sk, nonfinite, true);
  const int64_t ratios[3] = {1, 4, 8};
  const int64_t rep = ratios[rand_int(rng, 0, 2)];
  a.s = AttnShape{a.op.B, a.op.Sq, a.op.Sk, a.op.Hkv * rep, a.op.Hkv, rand_int(rng, 1, 8)};
  a.scale = std::uniform_real_distribution<double>(0.1, 1.0)(rng);
  a.q = randn(static_cast<size_t>(a.s.batch * a.s.seqlen_q * a.s.num_heads * a.s.head_dim), rng);
  a.k = randn(static_cast<size_t>(a.s.batch * a.s.seqlen_k * a.s.num_heads_kv * a.s.head_dim), rng);
  a.v = randn(a.k.size(), rng);
  return a;
}

void check_fwd_case(const AttnCase& a) {
  const AttnShape& s = a.s;
  SCOPED_TRACE(a.op.str() + " H" + std::to_string(s.num_heads) + " D" + std::to_string(s.head_dim));
  std::vector<double> out(a.q.size(), 7.0),
      lse(static_cast<size_t>(s.batch * s.num_heads * s.seqlen_q), 7.0);
  std::vector<double> bo(out.size()), bl(lse.size());
  bsk::ref::sparsek_attention_fwd(s, a.q.data(), a.k.data(), a.v.data(), a.op.u.data(), a.op.k,
                                  a.op.window, a.scale, out.data(), lse.data());
  brute_attention_fwd(s, a.q.data(), a.k.data(), a.v.data(), a.scale,
                      sparsek_rows(s, a.op.u, a.op.k, a.op.window), bo.data(), bl.data());
  int64_t x = first_mismatch(out.data(), bo.data(), static_cast<int64_t>(out.size()), 1e-10, 1e-12);
  ASSERT_EQ(x, -1) << "out[" << x << "] " << out[x] << " vs " << bo[x];
  x = first_mismatch(lse.data(), bl.data(), static_cast<int64_t>(lse.size()), 1e-10, 1e-12);
  ASSERT_EQ(x, -1) << "lse[" << x << "] " << lse[x] << " vs " << bl[x];
  // lse == nullptr is allowed and changes nothing.
  std::vector<double> out2(out.size());
  bsk::ref::sparsek_attention_fwd(s, a.q.data(), a.k.data(), a.v.data(), a.op.u.data(), a.op.k,
                                  a.op.window, a.scale, out2.data(), nullptr);
  ASSERT_EQ(first_mismatch(out2.data(), out.data(), static_cast<int64_t>(out.size()), 0, 0), -1);
}

TEST(RefSparseK, AttentionFwdMatchesBruteForceRandom) {
  std::mt19937_64 rng(0x5eed0004);
  for (int rep = 0; rep < 300; ++rep) {
    check_fwd_case(random_attn_case(rng, 40, 0.1));
    if (HasFatalFailure()) return;
  }
}

// With k >= Sk every candidate is selected with gate 1: dense causal attention.
TEST(RefSparseK, LargeKEqualsDenseCausal) {
  std::mt19937_64 rng(0x5eed0005);
  for (int rep = 0; rep < 60; ++rep) {
    AttnCase a = random_attn_case(rng, 40, 0.0);
    a.op.k = a.op.Sk + rand_int(rng, 0, 3);
    a.op.window = rand_int(rng, 0, 1) ? 0 : rand_int(rng, 1, a.op.Sk + 3);
    const AttnShape& s = a.s;
    SCOPED_TRACE(a.op.str());
    const size_t nl = static_cast<size_t>(s.batch * s.num_heads * s.seqlen_q);
    std::vector<double> o1(a.q.size()), o2(a.q.size()), l1(nl), l2(nl);
    bsk::ref::sparsek_attention_fwd(s, a.q.data(), a.k.data(), a.v.data(), a.op.u.data(), a.op.k,
                                    a.op.window, a.scale, o1.data(), l1.data());
    bsk::ref::attention_fwd(s, a.q.data(), a.k.data(), a.v.data(), true, a.scale, o2.data(),
                            l2.data());
    ASSERT_EQ(first_mismatch(o1.data(), o2.data(), static_cast<int64_t>(o1.size()), 1e-12, 1e-13),
              -1);
    ASSERT_EQ(first_mismatch(l1.data(), l2.data(), static_cast<int64_t>(nl), 1e-12, 1e-13), -1);
    // And the backward: same dq/dk/dv, no score gradient (no gate depends on tau).
    auto dout = randn(a.q.size(), rng), dlse = randn(nl, rng);
    std::vector<double> dq1(a.q.size()), dk1(a.k.size()), dv1(a.k.size()), du(a.op.u.size(), 7);
    std::vector<double> dq2(a.q.size()), dk2(a.k.size()), dv2(a.k.size());
    bsk::ref::sparsek_attention_bwd(s, a.q.data(), a.k.data(), a.v.data(), a.op.u.data(), a.op.k,
                                    a.op.window, a.scale, dout.data(), dlse.data(), dq1.data(),
                                    dk1.data(), dv1.data(), du.data());
    bsk::ref::attention_bwd(s, a.q.data(), a.k.data(), a.v.data(), dout.data(), dlse.data(), true,
                            a.scale, dq2.data(), dk2.data(), dv2.data());
    ASSERT_EQ(
        first_mismatch(dq1.data(), dq2.data(), static_cast<int64_t>(dq1.size()), 1e-11, 1e-12), -1);
    ASSERT_EQ(
        first_mismatch(dk1.data(), dk2.data(), static_cast<int64_t>(dk1.size()), 1e-11, 1e-12), -1);
    ASSERT_EQ(
        first_mismatch(dv1.data(), dv2.data(), static_cast<int64_t>(dv1.size()), 1e-11, 1e-12), -1);
    for (double x : du) ASSERT_EQ(x, 0.0);
  }
}

// k = 0: the sliding window alone, whatever the scores.
TEST(RefSparseK, WindowOnlyEqualsSlidingWindow) {
  std::mt19937_64 rng(0x5eed0006);
  for (int rep = 0; rep < 60; ++rep) {
    AttnCase a = random_attn_case(rng, 40, 0.0);
    a.op.k = 0;
    a.op.window =
        rand_int(rng, 0, 3) == 0 ? a.op.Sk + rand_int(rng, 0, 4) : rand_int(rng, 1, a.op.Sk);
    const AttnShape& s = a.s;
    const int64_t w = a.op.window;
    SCOPED_TRACE(a.op.str());
    const size_t nl = static_cast<size_t>(s.batch * s.num_heads * s.seqlen_q);
    std::vector<double> o1(a.q.size()), o2(a.q.size()), l1(nl), l2(nl);
    bsk::ref::sparsek_attention_fwd(s, a.q.data(), a.k.data(), a.v.data(), a.op.u.data(), 0, w,
                                    a.scale, o1.data(), l1.data());
    RowSetFn sliding = [&](int64_t, int64_t, int64_t i) {
      RowSet rs;
      const int64_t p = s.seqlen_k - s.seqlen_q + i;
      rs.allowed.assign(static_cast<size_t>(s.seqlen_k), 0);
      rs.g.assign(static_cast<size_t>(s.seqlen_k), 1.0);
      for (int64_t j = 0; j < s.seqlen_k; ++j) rs.allowed[j] = j <= p && j > p - w;
      return rs;
    };
    brute_attention_fwd(s, a.q.data(), a.k.data(), a.v.data(), a.scale, sliding, o2.data(),
                        l2.data());
    ASSERT_EQ(first_mismatch(o1.data(), o2.data(), static_cast<int64_t>(o1.size()), 1e-11, 1e-12),
              -1);
    ASSERT_EQ(first_mismatch(l1.data(), l2.data(), static_cast<int64_t>(nl), 1e-11, 1e-12), -1);
    auto dout = randn(a.q.size(), rng);
    std::vector<double> dq(a.q.size()), dk(a.k.size()), dv(a.k.size()), du(a.op.u.size(), 7);
    bsk::ref::sparsek_attention_bwd(s, a.q.data(), a.k.data(), a.v.data(), a.op.u.data(), 0, w,
                                    a.scale, dout.data(), nullptr, dq.data(), dk.data(), dv.data(),
                                    du.data());
    for (double x : du) ASSERT_EQ(x, 0.0);
  }
}

TEST(RefSparseK, NonFiniteScoresGiveNaNRows) {
  std::mt19937_64 rng(0x5eed0007);
  for (double bad : {kNaN, kInf, -kInf}) {
    const int64_t Sk = 20, k = 3, window = 2;
    AttnShape s{1, Sk, Sk, 4, 2, 4};
    auto q = randn(static_cast<size_t>(Sk * 4 * 4), rng), kk = randn(Sk * 2 * 4, rng),
         v = randn(Sk * 2 * 4, rng);
    auto u = make_scores(ScoreKind::kNormal, 1, Sk, 2, rng);
    u[9 * 2 + 0] = bad;  // kv head 0, key 9: a candidate from p = 11 on
    std::vector<double> out(q.size()), lse(4 * Sk);
    bsk::ref::sparsek_attention_fwd(s, q.data(), kk.data(), v.data(), u.data(), k, window, 0.5,
                                    out.data(), lse.data());
    for (int64_t h = 0; h < 4; ++h)
      for (int64_t i = 0; i < Sk; ++i) {
        // Rows with n_p > k and key 9 a candidate: p >= 11 and n_p = p - 1 > 3.
        const bool dead = h / 2 == 0 && i >= 11;
        EXPECT_EQ(std::isnan(lse[h * Sk + i]), dead) << h << " " << i;
        for (int64_t d = 0; d < 4; ++d)
          EXPECT_EQ(std::isnan(out[(i * 4 + h) * 4 + d]), dead) << h << " " << i;
      }
    // The backward stays finite: NaN rows contribute nothing, and the rest matches brute force.
    auto dout = randn(q.size(), rng), dlse = randn(lse.size(), rng);
    std::vector<double> dq(q.size()), dk(kk.size()), dv(v.size()), du(u.size());
    std::vector<double> bq(q.size()), bk(kk.size()), bv(v.size()), bu(u.size());
    bsk::ref::sparsek_attention_bwd(s, q.data(), kk.data(), v.data(), u.data(), k, window, 0.5,
                                    dout.data(), dlse.data(), dq.data(), dk.data(), dv.data(),
                                    du.data());
    brute_sparsek_bwd(s, q.data(), kk.data(), v.data(), u, k, window, 0.5, dout.data(), dlse.data(),
                      bq.data(), bk.data(), bv.data(), bu.data());
    for (auto* g : {&dq, &dk, &dv, &du})
      for (double x : *g) ASSERT_TRUE(std::isfinite(x));
    for (int64_t i = 11; i < Sk; ++i)  // dq of dead rows (heads 0, 1) is exactly 0
      for (int64_t d = 0; d < 8; ++d) EXPECT_EQ(dq[i * 16 + d], 0.0);
    EXPECT_EQ(first_mismatch(dq.data(), bq.data(), static_cast<int64_t>(dq.size()), 1e-10, 1e-12),
              -1);
    EXPECT_EQ(first_mismatch(du.data(), bu.data(), static_cast<int64_t>(du.size()), 1e-10, 1e-12),
              -1);
  }
}

// ---------------------------------------------------------------------------------------------
// Awkward and long sizes.
// ---------------------------------------------------------------------------------------------
TEST(RefSparseK, AwkwardSizesFullBruteForce) {
  std::mt19937_64 rng(0x5eed0008);
  for (int64_t S : {1, 2, 113, 1000})
    for (ScoreKind kind : {ScoreKind::kNormal, ScoreKind::kTies, ScoreKind::kSlope})
      for (auto [k, w] : std::vector<std::pair<int64_t, int64_t>>{
               {1, 0}, {7, 16}, {64, 0}, {S, 0}, {S + 5, 3}, {3, S + 2}, {0, 5}}) {
        if (S > 200 && kind == ScoreKind::kTies && k == 1) continue;  // keep the runtime sane
        OpCase c;
        c.kind = kind;
        c.B = 1;
        c.Hkv = S > 200 ? 1 : 2;
        c.Sk = S;
        c.Sq = S;
        c.k = k;
        c.window = w;
        c.u = make_scores(kind, 1, S, c.Hkv, rng);
        check_operator_case(c, S > 200 ? 97 : 1);
        if (HasFatalFailure()) return;
        if (S <= 113) check_selection_case(c);
        if (HasFatalFailure()) return;
      }
}

// S = 4097 (and a long 65536): the operator against brute force on sampled rows.
TEST(RefSparseK, LongSequencesSampledRows) {
  std::mt19937_64 rng(0x5eed0009);
  struct Cfg {
    int64_t S, Sq, k, w;
    ScoreKind kind;
  };
  const std::vector<Cfg> cfgs = {
      {4097, 4097, 256, 256, ScoreKind::kNormal}, {4097, 4097, 64, 0, ScoreKind::kSlope},
      {4097, 4097, 1024, 1024, ScoreKind::kTies}, {4097, 1000, 1, 3000, ScoreKind::kSteps},
      {4097, 4097, 4096, 1, ScoreKind::kGap},     {4097, 4097, 5000, 0, ScoreKind::kNormal},
      {4097, 113, 256, 5000, ScoreKind::kNormal}, {65536, 65536, 256, 256, ScoreKind::kSlope},
  };
  for (const Cfg& cfg : cfgs) {
    OpCase c;
    c.kind = cfg.kind;
    c.B = 1;
    c.Hkv = cfg.S > 5000 ? 1 : 2;
    c.Sk = cfg.S;
    c.Sq = cfg.Sq;
    c.k = cfg.k;
    c.window = cfg.w;
    c.u = make_scores(cfg.kind, 1, c.Sk, c.Hkv, rng);
    SCOPED_TRACE(c.str());
    const auto t0 = std::chrono::steady_clock::now();
    const auto info = run_operator(c);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Quadratic work would be ~S^2 = 4.3e9 steps at S = 65536; the sweep takes well under 1 s.
    EXPECT_LT(sec, 20.0);
    std::vector<int64_t> rows = {0, 1, c.Sq / 2, c.Sq - 2, c.Sq - 1};
    for (int t = 0; t < 12; ++t) rows.push_back(rand_int(rng, 0, c.Sq - 1));
    // The rows around the first one with n_p > k.
    const int64_t p_first = cfg.w > 0 ? cfg.k + cfg.w : cfg.k;
    for (int64_t d = -1; d <= 1; ++d) rows.push_back(p_first + d - (c.Sk - c.Sq));
    for (int64_t h = 0; h < c.Hkv; ++h) {
      const auto uh = head_scores(c.u, 0, c.Sk, c.Hkv, h);
      for (int64_t i : rows) {
        if (i < 0 || i >= c.Sq) continue;
        const BruteRow want = brute_row(uh, c.Sk - c.Sq + i, c.k, c.window, cfg.S < 5000);
        ASSERT_TRUE(row_matches(info[h * c.Sq + i], want, cfg.S < 5000)) << "h=" << h << " i=" << i;
      }
    }
    if (cfg.S < 5000 && cfg.k <= 1024) {
      // Selection on every 97th row.
      check_selection_case(c, 97);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(RefSparseK, AttentionAwkwardSizesAndGqa) {
  std::mt19937_64 rng(0x5eed000a);
  for (int64_t S : {1, 113})
    for (int64_t rep : {1, 4, 8})
      for (auto [k, w] : std::vector<std::pair<int64_t, int64_t>>{
               {5, 0}, {16, 16}, {S + 1, 0}, {0, S + 3}, {7, S + 1}}) {
        AttnCase a;
        a.op.kind = rep == 4 ? ScoreKind::kTies : ScoreKind::kSlope;
        a.op.B = 2;
        a.op.Hkv = rep == 8 ? 1 : 2;
        a.op.Sk = S;
        a.op.Sq = S == 1 ? 1 : 100;
        a.op.k = k;
        a.op.window = w;
        a.op.u = make_scores(a.op.kind, 2, S, a.op.Hkv, rng);
        a.s = AttnShape{2, a.op.Sq, S, a.op.Hkv * rep, a.op.Hkv, 8};
        a.scale = 0.35;
        a.q = randn(static_cast<size_t>(2 * a.op.Sq * a.s.num_heads * 8), rng);
        a.k = randn(static_cast<size_t>(2 * S * a.op.Hkv * 8), rng);
        a.v = randn(a.k.size(), rng);
        check_fwd_case(a);
        if (HasFatalFailure()) return;
      }
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------
TEST(RefSparseK, BackwardMatchesBruteForceRandom) {
  std::mt19937_64 rng(0x5eed000b);
  int64_t nonzero_du = 0;
  for (int rep = 0; rep < 250; ++rep) {
    const AttnCase a = random_attn_case(rng, 36, 0.08);
    const AttnShape& s = a.s;
    SCOPED_TRACE(a.op.str() + " H" + std::to_string(s.num_heads));
    const size_t nl = static_cast<size_t>(s.batch * s.num_heads * s.seqlen_q);
    auto dout = randn(a.q.size(), rng), dlse = randn(nl, rng);
    const double* dl = rep % 2 ? dlse.data() : nullptr;
    std::vector<double> dq(a.q.size(), 7), dk(a.k.size(), 7), dv(a.k.size(), 7),
        du(a.op.u.size(), 7);
    std::vector<double> bq(a.q.size()), bk(a.k.size()), bv(a.k.size()), bu(a.op.u.size());
    bsk::ref::sparsek_attention_bwd(s, a.q.data(), a.k.data(), a.v.data(), a.op.u.data(), a.op.k,
                                    a.op.window, a.scale, dout.data(), dl, dq.data(), dk.data(),
                                    dv.data(), du.data());
    brute_sparsek_bwd(s, a.q.data(), a.k.data(), a.v.data(), a.op.u, a.op.k, a.op.window, a.scale,
                      dout.data(), dl, bq.data(), bk.data(), bv.data(), bu.data());
    for (auto [g, w, name] : {std::tuple{&dq, &bq, "dq"}, std::tuple{&dk, &bk, "dk"},
                              std::tuple{&dv, &bv, "dv"}, std::tuple{&du, &bu, "dscores"}}) {
      const int64_t x =
          first_mismatch(g->data(), w->data(), static_cast<int64_t>(g->size()), 1e-9, 1e-11);
      ASSERT_EQ(x, -1) << name << "[" << x << "] " << (*g)[x] << " vs " << (*w)[x];
    }
    for (double x : du) nonzero_du += x != 0.0;
  }
  EXPECT_GT(nonzero_du, 500);
}

// Loss = sum(out * dout) + sum(lse * dlse), differentiated by central differences.
struct FdProblem {
  AttnShape s;
  int64_t k = 0, window = 0;
  double scale = 0.7;
  std::vector<double> q, kk, v, u, dout, dlse;
  bool use_dlse = false;
  double loss() const {
    std::vector<double> out(q.size()), lse(static_cast<size_t>(s.batch * s.num_heads * s.seqlen_q));
    bsk::ref::sparsek_attention_fwd(s, q.data(), kk.data(), v.data(), u.data(), k, window, scale,
                                    out.data(), lse.data());
    double L = 0;
    for (size_t x = 0; x < out.size(); ++x) L += out[x] * dout[x];
    if (use_dlse)
      for (size_t x = 0; x < lse.size(); ++x) L += lse[x] * dlse[x];
    return L;
  }
  // The discrete structure of the selection (Sel_p via theta, |A_p|).
  std::vector<int64_t> structure() const {
    std::vector<SparseKQuery> info(static_cast<size_t>(s.batch * s.num_heads_kv * s.seqlen_q));
    bsk::ref::sparsek_operator(s.batch, s.seqlen_k, s.num_heads_kv, s.seqlen_q, u.data(), k, window,
                               info.data());
    std::vector<int64_t> r;
    for (const auto& x : info) {
      r.push_back(x.theta_idx);
      r.push_back(x.n_active);
    }
    return r;
  }
};

TEST(RefSparseK, BackwardFiniteDifferences) {
  std::mt19937_64 rng(0x5eed000c);
  const double eps = 1e-6;
  int64_t checked_u = 0, skipped_u = 0, nonzero_u = 0;
  for (int rep = 0; rep < 48; ++rep) {
    FdProblem P;
    const int64_t Hkv = rand_int(rng, 1, 2), rep_h = rand_int(rng, 1, 2);
    const int64_t Sk = rand_int(rng, 3, 11), Sq = rand_int(rng, 1, Sk);
    P.s = AttnShape{rand_int(rng, 1, 2), Sq, Sk, Hkv * rep_h, Hkv, 3};
    P.k = rand_int(rng, 1, Sk - 1);
    P.window = rand_int(rng, 0, 3);
    P.use_dlse = rep % 2 == 1;
    P.q = randn(static_cast<size_t>(P.s.batch * Sq * P.s.num_heads * 3), rng);
    P.kk = randn(static_cast<size_t>(P.s.batch * Sk * Hkv * 3), rng);
    P.v = randn(P.kk.size(), rng);
    // Well-separated scores (spread 1.5, no ties): the active sets are stable under +-eps.
    P.u = make_scores(ScoreKind::kNormal, P.s.batch, Sk, Hkv, rng);
    P.dout = randn(P.q.size(), rng);
    P.dlse = randn(static_cast<size_t>(P.s.batch * P.s.num_heads * Sq), rng);
    SCOPED_TRACE("rep " + std::to_string(rep) + " Sk" + std::to_string(Sk) + " Sq" +
                 std::to_string(Sq) + " k" + std::to_string(P.k) + " w" + std::to_string(P.window) +
                 (P.use_dlse ? " dlse" : ""));
    std::vector<double> dq(P.q.size()), dk(P.kk.size()), dv(P.v.size()), du(P.u.size());
    bsk::ref::sparsek_attention_bwd(
        P.s, P.q.data(), P.kk.data(), P.v.data(), P.u.data(), P.k, P.window, P.scale, P.dout.data(),
        P.use_dlse ? P.dlse.data() : nullptr, dq.data(), dk.data(), dv.data(), du.data());
    const auto base_structure = P.structure();
    auto fd = [&](std::vector<double>& x, size_t e) {
      const double x0 = x[e];
      x[e] = x0 + eps;
      const double lp = P.loss();
      const bool same_p = P.structure() == base_structure;
      x[e] = x0 - eps;
      const double lm = P.loss();
      const bool same_m = P.structure() == base_structure;
      x[e] = x0;
      return std::pair{(lp - lm) / (2 * eps), same_p && same_m};
    };
    for (auto [x, g, name] : {std::tuple{&P.q, &dq, "dq"}, std::tuple{&P.kk, &dk, "dk"},
                              std::tuple{&P.v, &dv, "dv"}, std::tuple{&P.u, &du, "dscores"}}) {
      for (size_t e = 0; e < x->size(); ++e) {
        auto [num, stable] = fd(*x, e);
        if (x == &P.u) {
          if (!stable) {
            ++skipped_u;
            continue;
          }
          ++checked_u;
          nonzero_u += std::abs((*g)[e]) > 1e-6;
        }
        ASSERT_NEAR((*g)[e], num, 1e-6 * (1.0 + std::abs(num))) << name << "[" << e << "]";
      }
    }
  }
  EXPECT_LT(skipped_u, checked_u / 20 + 1);
  EXPECT_GT(nonzero_u, 100);  // the operator's gradient is exercised, not trivially zero
}

// The gate VJP alone: loss = sum(dgate * gate) over the selection.
TEST(RefSparseK, SelectionBackwardFiniteDifferences) {
  std::mt19937_64 rng(0x5eed000d);
  const double eps = 1e-6;
  int64_t nonzero = 0;
  for (int rep = 0; rep < 60; ++rep) {
    const int64_t B = rand_int(rng, 1, 2), Hkv = rand_int(rng, 1, 2), Sk = rand_int(rng, 2, 24);
    const int64_t Sq = rand_int(rng, 1, Sk), k = rand_int(rng, 1, Sk), w = rand_int(rng, 0, 4);
    auto u = make_scores(rep % 3 ? ScoreKind::kNormal : ScoreKind::kSlope, B, Sk, Hkv, rng);
    auto dgate = randn(static_cast<size_t>(B * Sq * Hkv * k), rng);
    std::vector<double> du(u.size());
    bsk::ref::sparsek_selection_bwd(B, Sk, Hkv, Sq, u.data(), k, w, dgate.data(), du.data());
    auto loss = [&](std::vector<int64_t>* idx_out) {
      std::vector<int64_t> idx(dgate.size());
      std::vector<double> gate(dgate.size());
      bsk::ref::sparsek_selection(B, Sk, Hkv, Sq, u.data(), k, w, idx.data(), gate.data());
      if (idx_out) *idx_out = idx;
      double L = 0;
      for (size_t x = 0; x < gate.size(); ++x) L += dgate[x] * gate[x];
      return L;
    };
    std::vector<int64_t> idx0, idx1;
    loss(&idx0);
    for (size_t e = 0; e < u.size(); ++e) {
      const double x0 = u[e];
      u[e] = x0 + eps;
      const double lp = loss(&idx1);
      bool stable = idx1 == idx0;
      u[e] = x0 - eps;
      const double lm = loss(&idx1);
      stable = stable && idx1 == idx0;
      u[e] = x0;
      if (!stable) continue;
      const double num = (lp - lm) / (2 * eps);
      ASSERT_NEAR(du[e], num, 1e-6 * (1.0 + std::abs(num))) << "rep " << rep << " e " << e;
      nonzero += std::abs(du[e]) > 1e-6;
    }
  }
  EXPECT_GT(nonzero, 200);
}

}  // namespace
