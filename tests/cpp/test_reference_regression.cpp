// Regressions of the CPU reference found by cross-checks, each with the exact expected answer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "bsk/reference.h"

namespace {

// A later key with an infinite score is not a candidate of row 1 and must not disturb it:
// u = {0.5, 1, +inf}, k = 1, window = 0, row p = 1: f(t) = clip(0.5 - t) + clip(1 - t) = 1 at
// t = 0.25 with both keys active.
TEST(RefRegression, InfiniteLaterKeyDoesNotDisturbEarlierRows) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u = {0.5, 1.0, inf};
  std::vector<bsk::ref::SparseKQuery> info(3);
  bsk::ref::sparsek_operator(1, 3, 1, 3, u.data(), 1, 0, info.data());
  EXPECT_EQ(info[0].tau, -inf);  // one candidate <= k
  EXPECT_DOUBLE_EQ(info[1].tau, 0.25);
  EXPECT_EQ(info[1].n_active, 2);
  EXPECT_EQ(info[1].theta_idx, 1);
  EXPECT_TRUE(std::isnan(info[2].tau));  // row 2 has the infinite candidate
}

// Gap case: the k-th and (k+1)-th scores are >= 1 apart, so f is flat at k on an interval and
// tau is its left end, the (k+1)-th score, with no active key.
TEST(RefRegression, GapCaseTakesSmallestThreshold) {
  std::vector<double> u = {3.0, 0.25, 5.0, 0.0};
  std::vector<bsk::ref::SparseKQuery> info(4);
  bsk::ref::sparsek_operator(1, 4, 1, 4, u.data(), 2, 0, info.data());
  EXPECT_DOUBLE_EQ(info[3].tau, 0.25);
  EXPECT_EQ(info[3].n_active, 0);
  EXPECT_EQ(info[3].theta_idx, 0);
  EXPECT_DOUBLE_EQ(info[3].theta_val, 3.0);
}

// Brute force from the definition on small random prefixes: bisection on f to 1e-12.
TEST(RefRegression, OperatorMatchesBisection) {
  std::mt19937_64 rng(1234);
  std::normal_distribution<double> nd;
  for (int rep = 0; rep < 300; ++rep) {
    int S = 1 + rep % 40, k = rep % 7, w = rep % 5;
    std::vector<double> u(S);
    for (auto& x : u) x = (rep % 3 == 0) ? std::round(nd(rng) * 2) / 2 : nd(rng);
    std::vector<bsk::ref::SparseKQuery> info(S);
    bsk::ref::sparsek_operator(1, S, 1, S, u.data(), k, w, info.data());
    for (int p = 0; p < S; ++p) {
      int n = w > 0 ? std::max(0, p - w + 1) : p + 1;
      ASSERT_EQ(info[p].n_cand, n);
      if (n <= k) {
        EXPECT_EQ(info[p].tau, -std::numeric_limits<double>::infinity());
        continue;
      }
      auto f = [&](double t) {
        double s = 0;
        for (int j = 0; j < n; ++j) s += std::clamp(u[j] - t, 0.0, 1.0);
        return s;
      };
      double lo = -100, hi = 100;  // f(lo) > k >= f(hi); find the smallest t with f(t) <= k
      for (int it = 0; it < 200; ++it) {
        double mid = 0.5 * (lo + hi);
        (f(mid) <= k ? hi : lo) = mid;
      }
      EXPECT_NEAR(info[p].tau, hi, 1e-9) << "rep " << rep << " p " << p;
      int active = 0;
      for (int j = 0; j < n; ++j) active += (u[j] > info[p].tau && u[j] < info[p].tau + 1);
      EXPECT_EQ(info[p].n_active, active) << "rep " << rep << " p " << p;
    }
  }
}

}  // namespace
