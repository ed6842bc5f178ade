// Tests of the dense attention CPU reference (src/reference/attention_ref.cpp): brute force from
// the definition, rows without keys, numerical stability, GQA, and the backward by finite
// differences.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "brute_force.h"
#include "bsk/reference.h"

namespace {

using bsk::ref::AttnShape;
using namespace bsk_test;

struct Dense {
  AttnShape s;
  double scale = 0.5;
  std::vector<double> q, k, v;
  size_t n_lse() const { return static_cast<size_t>(s.batch * s.num_heads * s.seqlen_q); }
};

Dense random_dense(std::mt19937_64& rng, int64_t max_s, int64_t max_d) {
  Dense a;
  const int64_t ratios[3] = {1, 4, 8};
  const int64_t Hkv = rand_int(rng, 1, 2), rep = ratios[rand_int(rng, 0, 2)];
  a.s = AttnShape{
      rand_int(rng, 1, 2),    rand_int(rng, 1, max_s), rand_int(rng, 1, max_s), Hkv * rep, Hkv,
      rand_int(rng, 1, max_d)};
  a.scale = std::uniform_real_distribution<double>(0.1, 1.0)(rng);
  a.q = randn(static_cast<size_t>(a.s.batch * a.s.seqlen_q * a.s.num_heads * a.s.head_dim), rng);
  a.k = randn(static_cast<size_t>(a.s.batch * a.s.seqlen_k * a.s.num_heads_kv * a.s.head_dim), rng);
  a.v = randn(a.k.size(), rng);
  return a;
}

std::string shape_str(const AttnShape& s, bool causal) {
  return "B" + std::to_string(s.batch) + " Sq" + std::to_string(s.seqlen_q) + " Sk" +
         std::to_string(s.seqlen_k) + " H" + std::to_string(s.num_heads) + " Hkv" +
         std::to_string(s.num_heads_kv) + " D" + std::to_string(s.head_dim) +
         (causal ? " causal" : "");
}

TEST(RefAttention, FwdMatchesBruteForceRandom) {
  std::mt19937_64 rng(0xa77e0001);
  for (int rep = 0; rep < 300; ++rep) {
    const Dense a = random_dense(rng, rep % 10 == 9 ? 113 : 24, 16);
    const bool causal = rep % 2 == 1;
    SCOPED_TRACE(shape_str(a.s, causal));
    std::vector<double> out(a.q.size(), 7.0), lse(a.n_lse(), 7.0), bo(out.size()), bl(lse.size());
    bsk::ref::attention_fwd(a.s, a.q.data(), a.k.data(), a.v.data(), causal, a.scale, out.data(),
                            lse.data());
    brute_attention_fwd(a.s, a.q.data(), a.k.data(), a.v.data(), a.scale, dense_rows(a.s, causal),
                        bo.data(), bl.data());
    int64_t x =
        first_mismatch(out.data(), bo.data(), static_cast<int64_t>(out.size()), 1e-11, 1e-13);
    ASSERT_EQ(x, -1) << "out[" << x << "] " << out[x] << " vs " << bo[x];
    x = first_mismatch(lse.data(), bl.data(), static_cast<int64_t>(lse.size()), 1e-11, 1e-13);
    ASSERT_EQ(x, -1) << "lse[" << x << "] " << lse[x] << " vs " << bl[x];
  }
}

// Causal with Sq > Sk: the first Sq - Sk rows see no key: out 0, lse -inf, no gradient.
TEST(RefAttention, RowsWithoutKeys) {
  std::mt19937_64 rng(0xa77e0002);
  const AttnShape s{2, 9, 4, 4, 2, 5};
  auto q = randn(static_cast<size_t>(2 * 9 * 4 * 5), rng), k = randn(2 * 4 * 2 * 5, rng),
       v = randn(2 * 4 * 2 * 5, rng);
  std::vector<double> out(q.size(), 7.0), lse(2 * 4 * 9, 7.0);
  bsk::ref::attention_fwd(s, q.data(), k.data(), v.data(), true, 0.4, out.data(), lse.data());
  auto dout = randn(q.size(), rng), dlse = randn(lse.size(), rng);
  std::vector<double> dq(q.size(), 7.0), dk(k.size(), 7.0), dv(v.size(), 7.0);
  bsk::ref::attention_bwd(s, q.data(), k.data(), v.data(), dout.data(), dlse.data(), true, 0.4,
                          dq.data(), dk.data(), dv.data());
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 9; ++i)
      for (int64_t h = 0; h < 4; ++h) {
        const bool empty = i < 5;  // row i sees j <= 4 - 9 + i
        EXPECT_EQ(lse[(b * 4 + h) * 9 + i] == -kInf, empty) << b << " " << i << " " << h;
        for (int64_t d = 0; d < 5; ++d) {
          const int64_t x = ((b * 9 + i) * 4 + h) * 5 + d;
          if (empty) {
            EXPECT_EQ(out[x], 0.0);
            EXPECT_EQ(dq[x], 0.0);
          } else {
            EXPECT_NE(dq[x], 0.0);
          }
        }
      }
  // Sk == 0 (non-causal): every row is empty.
  const AttnShape e{1, 3, 0, 2, 1, 4};
  std::vector<double> qe(3 * 2 * 4, 1.0), oe(qe.size(), 7.0), le(2 * 3, 7.0);
  bsk::ref::attention_fwd(e, qe.data(), nullptr, nullptr, false, 0.5, oe.data(), le.data());
  for (double x : oe) EXPECT_EQ(x, 0.0);
  for (double x : le) EXPECT_EQ(x, -kInf);
}

// Logits near 1000 would overflow exp() without the max subtraction. A shared logit shift c
// (an extra dimension with q = c / scale, k = 1) must leave out unchanged and move lse by c.
TEST(RefAttention, StableWithLargeLogits) {
  std::mt19937_64 rng(0xa77e0003);
  const int64_t B = 1, Sq = 7, Sk = 11, H = 2, D = 4;
  const AttnShape s{B, Sq, Sk, H, 1, D}, s1{B, Sq, Sk, H, 1, D + 1};
  const double scale = 0.5, c = 1000.0;
  auto q = randn(static_cast<size_t>(Sq * H * D), rng), k = randn(Sk * D, rng),
       v = randn(Sk * D, rng);
  std::vector<double> q1, k1, v1;
  for (int64_t r = 0; r < Sq * H; ++r) {
    q1.insert(q1.end(), q.begin() + r * D, q.begin() + (r + 1) * D);
    q1.push_back(c / scale);
  }
  for (int64_t j = 0; j < Sk; ++j) {
    k1.insert(k1.end(), k.begin() + j * D, k.begin() + (j + 1) * D);
    k1.push_back(1.0);
    v1.insert(v1.end(), v.begin() + j * D, v.begin() + (j + 1) * D);
    v1.push_back(0.0);
  }
  for (bool causal : {false, true}) {
    std::vector<double> o(q.size()), l(H * Sq), o1(q1.size()), l1(H * Sq);
    bsk::ref::attention_fwd(s, q.data(), k.data(), v.data(), causal, scale, o.data(), l.data());
    bsk::ref::attention_fwd(s1, q1.data(), k1.data(), v1.data(), causal, scale, o1.data(),
                            l1.data());
    for (int64_t r = 0; r < Sq * H; ++r) {
      ASSERT_TRUE(std::isfinite(l1[r]));
      EXPECT_NEAR(l1[r], l[r] + c, 1e-9);
      for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(o1[r * (D + 1) + d], o[r * D + d], 1e-12);
    }
  }
}

// GQA is MHA with each kv head repeated over its group (dk/dv summed over the group).
TEST(RefAttention, GqaEqualsRepeatedKv) {
  std::mt19937_64 rng(0xa77e0004);
  for (int rep_case = 0; rep_case < 20; ++rep_case) {
    Dense a = random_dense(rng, 17, 8);
    const AttnShape& s = a.s;
    const int64_t rep = s.num_heads / s.num_heads_kv, D = s.head_dim;
    const AttnShape m{s.batch, s.seqlen_q, s.seqlen_k, s.num_heads, s.num_heads, D};
    std::vector<double> km, vm;
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t j = 0; j < s.seqlen_k; ++j)
        for (int64_t h = 0; h < s.num_heads; ++h) {
          const int64_t src = ((b * s.seqlen_k + j) * s.num_heads_kv + h / rep) * D;
          km.insert(km.end(), a.k.begin() + src, a.k.begin() + src + D);
          vm.insert(vm.end(), a.v.begin() + src, a.v.begin() + src + D);
        }
    const bool causal = rep_case % 2 == 0;
    SCOPED_TRACE(shape_str(s, causal));
    std::vector<double> o1(a.q.size()), o2(a.q.size()), l1(a.n_lse()), l2(a.n_lse());
    bsk::ref::attention_fwd(s, a.q.data(), a.k.data(), a.v.data(), causal, a.scale, o1.data(),
                            l1.data());
    bsk::ref::attention_fwd(m, a.q.data(), km.data(), vm.data(), causal, a.scale, o2.data(),
                            l2.data());
    ASSERT_EQ(first_mismatch(o1.data(), o2.data(), static_cast<int64_t>(o1.size()), 1e-13, 1e-14),
              -1);
    ASSERT_EQ(first_mismatch(l1.data(), l2.data(), static_cast<int64_t>(l1.size()), 1e-13, 1e-14),
              -1);
    auto dout = randn(a.q.size(), rng), dlse = randn(a.n_lse(), rng);
    std::vector<double> dq1(a.q.size()), dk1(a.k.size()), dv1(a.k.size());
    std::vector<double> dq2(a.q.size()), dk2(km.size()), dv2(km.size());
    bsk::ref::attention_bwd(s, a.q.data(), a.k.data(), a.v.data(), dout.data(), dlse.data(), causal,
                            a.scale, dq1.data(), dk1.data(), dv1.data());
    bsk::ref::attention_bwd(m, a.q.data(), km.data(), vm.data(), dout.data(), dlse.data(), causal,
                            a.scale, dq2.data(), dk2.data(), dv2.data());
    ASSERT_EQ(
        first_mismatch(dq1.data(), dq2.data(), static_cast<int64_t>(dq1.size()), 1e-12, 1e-13), -1);
    std::vector<double> dks(a.k.size(), 0.0), dvs(a.k.size(), 0.0);
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t j = 0; j < s.seqlen_k; ++j)
        for (int64_t h = 0; h < s.num_heads; ++h)
          for (int64_t d = 0; d < D; ++d) {
            const int64_t dst = ((b * s.seqlen_k + j) * s.num_heads_kv + h / rep) * D + d;
            const int64_t src = ((b * s.seqlen_k + j) * s.num_heads + h) * D + d;
            dks[dst] += dk2[src];
            dvs[dst] += dv2[src];
          }
    ASSERT_EQ(
        first_mismatch(dk1.data(), dks.data(), static_cast<int64_t>(dks.size()), 1e-12, 1e-13), -1);
    ASSERT_EQ(
        first_mismatch(dv1.data(), dvs.data(), static_cast<int64_t>(dvs.size()), 1e-12, 1e-13), -1);
  }
}

// Central differences of L = sum(out * dout) + sum(lse * dlse) (finite rows only).
TEST(RefAttention, BwdFiniteDifferences) {
  std::mt19937_64 rng(0xa77e0005);
  const double eps = 1e-6;
  for (int rep = 0; rep < 24; ++rep) {
    Dense a = random_dense(rng, 7, 4);
    const bool causal = rep % 2 == 0, use_dlse = (rep / 2) % 2 == 0;
    SCOPED_TRACE(shape_str(a.s, causal) + (use_dlse ? " dlse" : ""));
    auto dout = randn(a.q.size(), rng), dlse = randn(a.n_lse(), rng);
    auto loss = [&]() {
      std::vector<double> out(a.q.size()), lse(a.n_lse());
      bsk::ref::attention_fwd(a.s, a.q.data(), a.k.data(), a.v.data(), causal, a.scale, out.data(),
                              lse.data());
      double L = 0;
      for (size_t x = 0; x < out.size(); ++x) L += out[x] * dout[x];
      if (use_dlse)
        for (size_t x = 0; x < lse.size(); ++x)
          if (std::isfinite(lse[x])) L += lse[x] * dlse[x];
      return L;
    };
    std::vector<double> dq(a.q.size()), dk(a.k.size()), dv(a.v.size());
    bsk::ref::attention_bwd(a.s, a.q.data(), a.k.data(), a.v.data(), dout.data(),
                            use_dlse ? dlse.data() : nullptr, causal, a.scale, dq.data(), dk.data(),
                            dv.data());
    for (auto [x, g, name] :
         {std::tuple{&a.q, &dq, "dq"}, std::tuple{&a.k, &dk, "dk"}, std::tuple{&a.v, &dv, "dv"}})
      for (size_t e = 0; e < x->size(); ++e) {
        const double x0 = (*x)[e];
        (*x)[e] = x0 + eps;
        const double lp = loss();
        (*x)[e] = x0 - eps;
        const double lm = loss();
        (*x)[e] = x0;
        const double num = (lp - lm) / (2 * eps);
        ASSERT_NEAR((*g)[e], num, 1e-6 * (1.0 + std::abs(num))) << name << "[" << e << "]";
      }
  }
}

}  // namespace
