// Brute-force SparseK / attention computed straight from the definitions (SPEC section 1), for
// the tests of the CPU references. Quadratic or worse on purpose: no trees, no sweeps, every row
// from scratch.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "bsk/reference.h"

namespace bsk_test {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------------------------------------
// Random data.
// ---------------------------------------------------------------------------------------------
enum class ScoreKind { kNormal, kTies, kSlope, kConst, kGap, kSteps, kCount };

inline const char* kind_name(ScoreKind k) {
  static const char* names[] = {"normal", "ties", "slope", "const", "gap", "steps"};
  return names[static_cast<int>(k)];
}

// Scores [B, Sk, Hkv]. ties/steps/const are dyadic with few bits, so every sum the references
// form is exact and kinks are hit exactly (f == k at a breakpoint, u_j - tau == 1, ...).
inline std::vector<double> make_scores(ScoreKind kind, int64_t B, int64_t Sk, int64_t Hkv,
                                       std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  std::uniform_int_distribution<int> ties(-6, 6), steps(-3, 3);
  std::vector<double> u(static_cast<size_t>(B * Sk * Hkv));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < Sk; ++j)
      for (int64_t h = 0; h < Hkv; ++h) {
        double& x = u[(b * Sk + j) * Hkv + h];
        switch (kind) {
          case ScoreKind::kNormal:
            x = 1.5 * nd(rng);
            break;
          case ScoreKind::kTies:
            x = ties(rng) / 4.0;
            break;
          case ScoreKind::kSlope:
            x = 0.4 * nd(rng) + 0.07 * double(j);
            break;
          case ScoreKind::kConst:
            x = 0.5;
            break;
          case ScoreKind::kGap:
            x = 20.0 * nd(rng);
            break;
          default:
            x = steps(rng);
            break;
        }
      }
  return u;
}

inline std::vector<double> randn(size_t n, std::mt19937_64& rng, double sd = 1.0) {
  std::normal_distribution<double> nd(0.0, sd);
  std::vector<double> x(n);
  for (auto& e : x) e = nd(rng);
  return x;
}

inline int64_t rand_int(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// Scores of one (b, kv head) as a vector over j.
inline std::vector<double> head_scores(const std::vector<double>& u, int64_t b, int64_t Sk,
                                       int64_t Hkv, int64_t h) {
  std::vector<double> r(static_cast<size_t>(Sk));
  for (int64_t j = 0; j < Sk; ++j) r[j] = u[(b * Sk + j) * Hkv + h];
  return r;
}

// ---------------------------------------------------------------------------------------------
// The operator for one row, from the definition.
// ---------------------------------------------------------------------------------------------
struct BruteRow {
  bool dead = false;  // n_p > k with a non-finite candidate
  double tau = 0, theta_val = 0;
  int64_t theta_idx = -1, n_cand = 0, n_active = 0;
  double tau_bisect = 0;     // tau by plain bisection (a self-check of the brute force)
  std::vector<int64_t> sel;  // Sel_p, by (u, j) descending
  std::vector<double> gate;  // gates of sel
};

inline int64_t brute_n_cand(int64_t p, int64_t window, int64_t Sk) {
  return std::clamp<int64_t>(window > 0 ? p - window + 1 : p + 1, 0, Sk);
}

// f(t) = sum_{j < n} clip(u_j - t, 0, 1), summed directly.
inline double brute_f(const std::vector<double>& u, int64_t n, double t) {
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += std::clamp(u[j] - t, 0.0, 1.0);
  return s;
}

inline BruteRow brute_row(const std::vector<double>& u, int64_t p, int64_t k, int64_t window,
                          bool bisect = true) {
  const int64_t Sk = static_cast<int64_t>(u.size());
  BruteRow r;
  const int64_t n = r.n_cand = brute_n_cand(p, window, Sk);
  std::vector<int64_t> cand(static_cast<size_t>(n));
  std::iota(cand.begin(), cand.end(), 0);
  auto key = [&](int64_t j) { return std::isnan(u[j]) ? kInf : u[j]; };
  std::sort(cand.begin(), cand.end(),
            [&](int64_t a, int64_t b) { return key(a) != key(b) ? key(a) > key(b) : a > b; });
  if (n <= k) {
    r.tau = r.tau_bisect = -kInf;
    r.theta_val = -kInf;
    r.sel = cand;
    r.gate.assign(cand.size(), 1.0);
    return r;
  }
  bool finite = true;
  for (int64_t j = 0; j < n; ++j) finite = finite && std::isfinite(u[j]);
  if (!finite) {
    r.dead = true;
    r.tau = r.tau_bisect = r.theta_val = kNaN;
    return r;
  }
  // Exact enumeration: the smallest breakpoint R with f(R) <= k, the one before it L; f == k at
  // R, or the linear piece (L, R) (classified at its midpoint) crosses k.
  std::vector<double> bp;
  for (int64_t j = 0; j < n; ++j) {
    bp.push_back(u[j]);
    bp.push_back(u[j] - 1.0);
  }
  std::sort(bp.begin(), bp.end());
  bp.erase(std::unique(bp.begin(), bp.end()), bp.end());
  const double kk = double(k);
  int64_t lo = 0, hi = static_cast<int64_t>(bp.size()) - 1;  // f(bp.back()) == 0 <= k
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (brute_f(u, n, bp[mid]) <= kk)
      hi = mid;
    else
      lo = mid + 1;
  }
  const double R = bp[lo];
  if (brute_f(u, n, R) == kk || lo == 0) {
    r.tau = R;
  } else {
    const double L = bp[lo - 1], m = L + 0.5 * (R - L);
    double n_sat = 0, n_act = 0, s_act = 0;
    for (int64_t j = 0; j < n; ++j) {
      if (u[j] - m >= 1.0)
        n_sat += 1;
      else if (u[j] > m) {
        n_act += 1;
        s_act += u[j];
      }
    }
    r.tau = n_act > 0 ? (n_sat + s_act - kk) / n_act : R;
  }
  if (bisect) {  // the smallest t with f(t) <= k, by bisection on the direct sum
    double a = bp.front() - 1.0, b = bp.back() + 1.0;
    for (int it = 0; it < 200; ++it) {
      double mid = a + 0.5 * (b - a);
      if (!(mid > a && mid < b)) break;
      (brute_f(u, n, mid) <= kk ? b : a) = mid;
    }
    r.tau_bisect = b;
  }
  for (int64_t j = 0; j < n; ++j) r.n_active += (u[j] > r.tau && u[j] < r.tau + 1.0);
  if (k == 0) {
    r.theta_val = kInf;
  } else {
    r.theta_idx = cand[k - 1];
    r.theta_val = u[r.theta_idx];
  }
  r.sel.assign(cand.begin(), cand.begin() + k);
  for (int64_t j : r.sel) r.gate.push_back(std::clamp(u[j] - r.tau, 0.0, 1.0));
  return r;
}

// ---------------------------------------------------------------------------------------------
// Attention from an explicit per-row key set: allowed[j] and value gate g[j] over all Sk keys.
// ---------------------------------------------------------------------------------------------
struct RowSet {
  bool dead = false;  // NaN row: out and lse NaN
  std::vector<char> allowed;
  std::vector<double> g;
};

using RowSetFn = std::function<RowSet(int64_t b, int64_t hk, int64_t i)>;

inline void brute_attention_fwd(const bsk::ref::AttnShape& s, const double* q, const double* k,
                                const double* v, double scale, const RowSetFn& rows, double* out,
                                double* lse) {
  const int64_t D = s.head_dim, rep = s.num_heads / s.num_heads_kv;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i = 0; i < s.seqlen_q; ++i)
      for (int64_t h = 0; h < s.num_heads; ++h) {
        const int64_t hk = h / rep;
        const RowSet rs = rows(b, hk, i);
        double* o = out + ((b * s.seqlen_q + i) * s.num_heads + h) * D;
        double& l = lse[(b * s.num_heads + h) * s.seqlen_q + i];
        if (rs.dead) {
          std::fill(o, o + D, kNaN);
          l = kNaN;
          continue;
        }
        const double* qr = q + ((b * s.seqlen_q + i) * s.num_heads + h) * D;
        std::vector<double> logit(static_cast<size_t>(s.seqlen_k), -kInf);
        double mx = -kInf;
        for (int64_t j = 0; j < s.seqlen_k; ++j) {
          if (!rs.allowed[j]) continue;
          const double* kr = k + ((b * s.seqlen_k + j) * s.num_heads_kv + hk) * D;
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += qr[d] * kr[d];
          logit[j] = scale * acc;
          mx = std::max(mx, logit[j]);
        }
        std::fill(o, o + D, 0.0);
        if (mx == -kInf) {
          l = -kInf;
          continue;
        }
        double sum = 0;
        for (int64_t j = 0; j < s.seqlen_k; ++j)
          if (rs.allowed[j]) sum += std::exp(logit[j] - mx);
        l = mx + std::log(sum);
        for (int64_t j = 0; j < s.seqlen_k; ++j) {
          if (!rs.allowed[j]) continue;
          const double P = std::exp(logit[j] - l);
          const double* vr = v + ((b * s.seqlen_k + j) * s.num_heads_kv + hk) * D;
          for (int64_t d = 0; d < D; ++d) o[d] += P * rs.g[j] * vr[d];
        }
      }
}

inline RowSetFn dense_rows(const bsk::ref::AttnShape& s, bool causal) {
  return [s, causal](int64_t, int64_t, int64_t i) {
    RowSet rs;
    rs.allowed.assign(static_cast<size_t>(s.seqlen_k), 0);
    rs.g.assign(static_cast<size_t>(s.seqlen_k), 1.0);
    for (int64_t j = 0; j < s.seqlen_k; ++j)
      rs.allowed[j] = !causal || j <= s.seqlen_k - s.seqlen_q + i;
    return rs;
  };
}

// SparseK rows (U_p = W_p ∪ Sel_p) from brute_row; precomputed per (b, hk, i).
inline RowSetFn sparsek_rows(const bsk::ref::AttnShape& s, const std::vector<double>& u,
                             int64_t k_select, int64_t window) {
  auto table = std::make_shared<std::vector<RowSet>>();
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t hk = 0; hk < s.num_heads_kv; ++hk) {
      const auto uh = head_scores(u, b, s.seqlen_k, s.num_heads_kv, hk);
      for (int64_t i = 0; i < s.seqlen_q; ++i) {
        const int64_t p = s.seqlen_k - s.seqlen_q + i;
        const BruteRow r = brute_row(uh, p, k_select, window, false);
        RowSet rs;
        rs.dead = r.dead;
        rs.allowed.assign(static_cast<size_t>(s.seqlen_k), 0);
        rs.g.assign(static_cast<size_t>(s.seqlen_k), 0.0);
        for (size_t t = 0; t < r.sel.size(); ++t) {
          rs.allowed[r.sel[t]] = 1;
          rs.g[r.sel[t]] = r.gate[t];
        }
        if (window > 0)
          for (int64_t j = std::max<int64_t>(0, p - window + 1); j <= p; ++j) {
            rs.allowed[j] = 1;
            rs.g[j] = 1.0;
          }
        table->push_back(std::move(rs));
      }
    }
  const int64_t Hkv = s.num_heads_kv, Sq = s.seqlen_q;
  return [table, Hkv, Sq](int64_t b, int64_t hk, int64_t i) {
    return (*table)[(b * Hkv + hk) * Sq + i];
  };
}

// SparseK backward straight from SPEC section 1, O(S^2) per head: explicit P, G_pj, A_p, c_p.
inline void brute_sparsek_bwd(const bsk::ref::AttnShape& s, const double* q, const double* k,
                              const double* v, const std::vector<double>& u, int64_t k_select,
                              int64_t window, double scale, const double* dout, const double* dlse,
                              double* dq, double* dk, double* dv, double* du) {
  const int64_t D = s.head_dim, rep = s.num_heads / s.num_heads_kv, Sk = s.seqlen_k;
  std::fill(dq, dq + s.batch * s.seqlen_q * s.num_heads * D, 0.0);
  std::fill(dk, dk + s.batch * Sk * s.num_heads_kv * D, 0.0);
  std::fill(dv, dv + s.batch * Sk * s.num_heads_kv * D, 0.0);
  std::fill(du, du + s.batch * Sk * s.num_heads_kv, 0.0);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t hk = 0; hk < s.num_heads_kv; ++hk) {
      const auto uh = head_scores(u, b, Sk, s.num_heads_kv, hk);
      for (int64_t i = 0; i < s.seqlen_q; ++i) {
        const int64_t p = Sk - s.seqlen_q + i;
        const BruteRow r = brute_row(uh, p, k_select, window, false);
        if (r.dead) continue;
        std::vector<char> allowed(static_cast<size_t>(Sk), 0), in_sel(static_cast<size_t>(Sk), 0);
        std::vector<double> g(static_cast<size_t>(Sk), 0.0), G(static_cast<size_t>(Sk), 0.0);
        for (size_t t = 0; t < r.sel.size(); ++t) {
          allowed[r.sel[t]] = in_sel[r.sel[t]] = 1;
          g[r.sel[t]] = r.gate[t];
        }
        if (window > 0)
          for (int64_t j = std::max<int64_t>(0, p - window + 1); j <= p; ++j) {
            allowed[j] = 1;
            g[j] = 1.0;
          }
        for (int64_t h = hk * rep; h < (hk + 1) * rep; ++h) {
          const double* qr = q + ((b * s.seqlen_q + i) * s.num_heads + h) * D;
          const double* dor = dout + ((b * s.seqlen_q + i) * s.num_heads + h) * D;
          double* dqr = dq + ((b * s.seqlen_q + i) * s.num_heads + h) * D;
          const double dl = dlse ? dlse[(b * s.num_heads + h) * s.seqlen_q + i] : 0.0;
          std::vector<double> logit(static_cast<size_t>(Sk), 0.0), P(static_cast<size_t>(Sk), 0.0);
          double mx = -kInf;
          for (int64_t j = 0; j < Sk; ++j) {
            if (!allowed[j]) continue;
            const double* kr = k + ((b * Sk + j) * s.num_heads_kv + hk) * D;
            double acc = 0;
            for (int64_t d = 0; d < D; ++d) acc += qr[d] * kr[d];
            logit[j] = scale * acc;
            mx = std::max(mx, logit[j]);
          }
          if (mx == -kInf) continue;
          double sum = 0;
          for (int64_t j = 0; j < Sk; ++j)
            if (allowed[j]) sum += std::exp(logit[j] - mx);
          std::vector<double> o(static_cast<size_t>(D), 0.0);
          for (int64_t j = 0; j < Sk; ++j) {
            if (!allowed[j]) continue;
            P[j] = std::exp(logit[j] - mx) / sum;
            const double* vr = v + ((b * Sk + j) * s.num_heads_kv + hk) * D;
            for (int64_t d = 0; d < D; ++d) o[d] += P[j] * g[j] * vr[d];
          }
          double Dp = 0;
          for (int64_t d = 0; d < D; ++d) Dp += dor[d] * o[d];
          for (int64_t j = 0; j < Sk; ++j) {
            if (!allowed[j]) continue;
            const double* kr = k + ((b * Sk + j) * s.num_heads_kv + hk) * D;
            const double* vr = v + ((b * Sk + j) * s.num_heads_kv + hk) * D;
            double* dkr = dk + ((b * Sk + j) * s.num_heads_kv + hk) * D;
            double* dvr = dv + ((b * Sk + j) * s.num_heads_kv + hk) * D;
            double dov = 0;
            for (int64_t d = 0; d < D; ++d) dov += dor[d] * vr[d];
            const double dS = P[j] * (g[j] * dov - Dp) + P[j] * dl;
            for (int64_t d = 0; d < D; ++d) {
              dvr[d] += P[j] * g[j] * dor[d];
              dqr[d] += scale * dS * kr[d];
              dkr[d] += scale * dS * qr[d];
            }
            if (in_sel[j]) G[j] += P[j] * dov;
          }
        }
        if (r.n_cand <= k_select) continue;
        std::vector<int64_t> A;
        for (int64_t j = 0; j < r.n_cand; ++j)
          if (uh[j] > r.tau && uh[j] < r.tau + 1.0) A.push_back(j);
        if (A.empty()) continue;
        double c = 0;
        for (int64_t j : A)
          if (in_sel[j]) c += G[j];
        c /= double(A.size());
        for (int64_t j : A) du[(b * Sk + j) * s.num_heads_kv + hk] += (in_sel[j] ? G[j] : 0.0) - c;
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons.
// ---------------------------------------------------------------------------------------------
// Same NaN/inf placement and |a - b| <= atol + rtol |b| elsewhere; returns the first bad index
// or -1.
inline int64_t first_mismatch(const double* a, const double* b, int64_t n, double rtol,
                              double atol) {
  for (int64_t x = 0; x < n; ++x) {
    if (std::isnan(a[x]) || std::isnan(b[x])) {
      if (std::isnan(a[x]) != std::isnan(b[x])) return x;
      continue;
    }
    if (std::isinf(a[x]) || std::isinf(b[x])) {
      if (a[x] != b[x]) return x;
      continue;
    }
    if (!(std::abs(a[x] - b[x]) <= atol + rtol * std::abs(b[x]))) return x;
  }
  return -1;
}

}  // namespace bsk_test
