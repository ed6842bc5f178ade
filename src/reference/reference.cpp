// Exact CPU references (double precision). See include/bsk/reference.h for the contract.
#include "bsk/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace bsk::ref {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

inline int64_t qidx(const AttnShape& s, int64_t b, int64_t i, int64_t h) {
  return ((b * s.seqlen_q + i) * s.num_heads + h) * s.head_dim;
}
inline int64_t kidx(const AttnShape& s, int64_t b, int64_t j, int64_t h) {
  return ((b * s.seqlen_k + j) * s.num_heads_kv + h) * s.head_dim;
}

// Attention of one query row over an explicit key list with per-key gates. Writes out, lse and
// (optionally) the probabilities.
void attend_row(const AttnShape& s, const double* q, const double* k, const double* v, int64_t b,
                int64_t i, int64_t h, const std::vector<int64_t>& keys,
                const std::vector<double>& gates, double scale, double* out, double* lse,
                std::vector<double>* probs) {
  const int64_t D = s.head_dim, hk = h / (s.num_heads / s.num_heads_kv);
  const double* qr = q + qidx(s, b, i, h);
  double* o = out + qidx(s, b, i, h);
  std::vector<double> sc(keys.size());
  double mx = -kInf;
  for (size_t t = 0; t < keys.size(); ++t) {
    const double* kr = k + kidx(s, b, keys[t], hk);
    double acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += qr[d] * kr[d];
    sc[t] = acc * scale;
    mx = std::max(mx, sc[t]);
  }
  for (int64_t d = 0; d < D; ++d) o[d] = 0;
  if (keys.empty()) {
    if (lse) *lse = -kInf;
    if (probs) probs->clear();
    return;
  }
  double sum = 0;
  for (auto& x : sc) {
    x = std::exp(x - mx);
    sum += x;
  }
  for (size_t t = 0; t < keys.size(); ++t) {
    double p = sc[t] / sum;
    sc[t] = p;
    const double* vr = v + kidx(s, b, keys[t], hk);
    for (int64_t d = 0; d < D; ++d) o[d] += p * gates[t] * vr[d];
  }
  if (lse) *lse = mx + std::log(sum);
  if (probs) *probs = sc;
}

// Fenwick tree over ranks holding count and sum of inserted scores.
struct Fenwick {
  std::vector<int64_t> cnt;
  std::vector<double> sum;
  int64_t n;
  explicit Fenwick(int64_t n_) : cnt(n_ + 1, 0), sum(n_ + 1, 0.0), n(n_) {}
  void add(int64_t r, double u) {
    for (int64_t x = r + 1; x <= n; x += x & -x) {
      cnt[x] += 1;
      sum[x] += u;
    }
  }
  // count and sum over ranks [0, r)
  void prefix(int64_t r, int64_t& c, double& sm) const {
    c = 0;
    sm = 0;
    for (int64_t x = r; x > 0; x -= x & -x) {
      c += cnt[x];
      sm += sum[x];
    }
  }
  // rank of the k-th (1-based) inserted element in rank order
  int64_t kth(int64_t kk) const {
    int64_t pos = 0, log = 1;
    while ((log << 1) <= n) log <<= 1;
    for (int64_t step = log; step > 0; step >>= 1)
      if (pos + step <= n && cnt[pos + step] < kk) {
        pos += step;
        kk -= cnt[pos];
      }
    return pos;  // 0-based rank
  }
};

// One (batch, kv head): keys sorted by (u, j) descending; the operator per query prefix.
struct Sweep {
  std::vector<double> u;         // scores of this (b, h), by key index
  std::vector<int64_t> order;    // keys by rank
  std::vector<int64_t> rank_of;  // rank by key
  std::vector<double> sorted_u;  // u by rank (descending)
  int64_t S;

  explicit Sweep(std::vector<double> scores) : u(std::move(scores)), S(int64_t(u.size())) {
    order.resize(S);
    std::iota(order.begin(), order.end(), 0);
    auto key = [&](int64_t j) { return std::isnan(u[j]) ? kInf : u[j]; };  // NaN sorts high
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      double ua = key(a), ub = key(b);
      return ua != ub ? ua > ub : a > b;
    });
    rank_of.resize(S);
    sorted_u.resize(S);
    for (int64_t r = 0; r < S; ++r) {
      rank_of[order[r]] = r;
      sorted_u[r] = key(order[r]);
    }
  }
  // number of ranks with sorted_u > x (strict) and >= x
  int64_t ranks_gt(double x) const {
    return std::lower_bound(sorted_u.begin(), sorted_u.end(), x, std::greater<double>()) -
           sorted_u.begin();
  }
  int64_t ranks_ge(double x) const {
    return std::upper_bound(sorted_u.begin(), sorted_u.end(), x, std::greater<double>()) -
           sorted_u.begin();
  }
  // f(t) = sum over inserted of clip(u - t, 0, 1), with n_sat = #(u >= t+1) and the active part.
  double f(const Fenwick& fw, double t) const {
    int64_t c_sat, c_pos;
    double s_sat, s_pos;
    fw.prefix(ranks_ge(t + 1), c_sat, s_sat);
    fw.prefix(ranks_gt(t), c_pos, s_pos);
    // Infinite test points (from keys that are not candidates) have no active keys: avoid
    // inf * 0.
    const int64_t n_act = c_pos - c_sat;
    return double(c_sat) + (s_pos - s_sat) - (n_act != 0 ? t * double(n_act) : 0.0);
  }
};

}  // namespace

void attention_fwd(const AttnShape& s, const double* q, const double* k, const double* v,
                   bool causal, double scale, double* out, double* lse) {
  std::vector<int64_t> keys;
  std::vector<double> gates;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i = 0; i < s.seqlen_q; ++i) {
      int64_t last =
          causal ? std::min(s.seqlen_k - 1, s.seqlen_k - s.seqlen_q + i) : s.seqlen_k - 1;
      keys.clear();
      for (int64_t j = 0; j <= last; ++j) keys.push_back(j);
      gates.assign(keys.size(), 1.0);
      for (int64_t h = 0; h < s.num_heads; ++h)
        attend_row(s, q, k, v, b, i, h, keys, gates, scale, out,
                   lse ? lse + (b * s.num_heads + h) * s.seqlen_q + i : nullptr, nullptr);
    }
}

void attention_bwd(const AttnShape& s, const double* q, const double* k, const double* v,
                   const double* dout, const double* dlse, bool causal, double scale, double* dq,
                   double* dk, double* dv) {
  const int64_t D = s.head_dim, rep = s.num_heads / s.num_heads_kv;
  std::fill(dq, dq + s.batch * s.seqlen_q * s.num_heads * D, 0.0);
  std::fill(dk, dk + s.batch * s.seqlen_k * s.num_heads_kv * D, 0.0);
  std::fill(dv, dv + s.batch * s.seqlen_k * s.num_heads_kv * D, 0.0);
  std::vector<int64_t> keys;
  std::vector<double> gates, probs, o(D);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i = 0; i < s.seqlen_q; ++i) {
      int64_t last =
          causal ? std::min(s.seqlen_k - 1, s.seqlen_k - s.seqlen_q + i) : s.seqlen_k - 1;
      keys.clear();
      for (int64_t j = 0; j <= last; ++j) keys.push_back(j);
      gates.assign(keys.size(), 1.0);
      for (int64_t h = 0; h < s.num_heads; ++h) {
        if (keys.empty()) continue;
        const int64_t hk = h / rep;
        const double* qr = q + qidx(s, b, i, h);
        const double* dor = dout + qidx(s, b, i, h);
        {  // recompute the row's probabilities and output
          double mx = -kInf;
          probs.assign(keys.size(), 0);
          for (size_t t = 0; t < keys.size(); ++t) {
            const double* kr = k + kidx(s, b, keys[t], hk);
            double acc = 0;
            for (int64_t d = 0; d < D; ++d) acc += qr[d] * kr[d];
            probs[t] = acc * scale;
            mx = std::max(mx, probs[t]);
          }
          double sum = 0;
          for (auto& x : probs) sum += (x = std::exp(x - mx));
          for (auto& x : probs) x /= sum;
          std::fill(o.begin(), o.end(), 0.0);
          for (size_t t = 0; t < keys.size(); ++t) {
            const double* vr = v + kidx(s, b, keys[t], hk);
            for (int64_t d = 0; d < D; ++d) o[d] += probs[t] * vr[d];
          }
        }
        double Dp = 0;
        for (int64_t d = 0; d < D; ++d) Dp += dor[d] * o[d];
        double g_lse = dlse ? dlse[(b * s.num_heads + h) * s.seqlen_q + i] : 0.0;
        for (size_t t = 0; t < keys.size(); ++t) {
          const double* kr = k + kidx(s, b, keys[t], hk);
          const double* vr = v + kidx(s, b, keys[t], hk);
          double dP = 0;
          for (int64_t d = 0; d < D; ++d) dP += dor[d] * vr[d];
          double dS = probs[t] * (dP - Dp) + probs[t] * g_lse;
          double* dkr = dk + kidx(s, b, keys[t], hk);
          double* dvr = dv + kidx(s, b, keys[t], hk);
          double* dqr = dq + qidx(s, b, i, h);
          for (int64_t d = 0; d < D; ++d) {
            dvr[d] += probs[t] * dor[d];
            dqr[d] += scale * dS * kr[d];
            dkr[d] += scale * dS * qr[d];
          }
        }
      }
    }
}

void sparsek_operator(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                      const double* scores, int64_t k_select, int64_t window, SparseKQuery* info) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < num_heads_kv; ++h) {
      std::vector<double> u(seqlen_k);
      for (int64_t j = 0; j < seqlen_k; ++j) u[j] = scores[(b * seqlen_k + j) * num_heads_kv + h];
      Sweep sw(u);
      Fenwick fw(seqlen_k);
      int64_t inserted = 0, nonfinite = 0;
      for (int64_t i = 0; i < seqlen_q; ++i) {
        SparseKQuery& r = info[(b * num_heads_kv + h) * seqlen_q + i];
        const int64_t p = seqlen_k - seqlen_q + i;
        const int64_t n_p = window > 0 ? std::max<int64_t>(0, p - window + 1) : p + 1;
        while (inserted < n_p) {
          double x = u[inserted];
          if (!std::isfinite(x)) ++nonfinite;
          fw.add(sw.rank_of[inserted], std::isfinite(x) ? x : 0.0);
          ++inserted;
        }
        r.n_cand = n_p;
        r.n_active = 0;
        if (n_p <= k_select) {
          r.tau = -kInf;
          r.theta_val = -kInf;
          r.theta_idx = -1;
          continue;
        }
        if (nonfinite > 0) {
          r.tau = kNaN;
          r.theta_val = kNaN;
          r.theta_idx = -1;
          continue;
        }
        const double kk = double(k_select);
        // f is evaluated from prefix sums, so a kink that sits exactly on the level k (the flat
        // "gap" case) can come out a few ulps above it; compare with a relative tolerance far
        // below any real difference of the inputs.
        const double tol = 1e-12 * (1.0 + kk);
        // Test points: the kinks u and u - 1 of every key (inserted or not: extra points are
        // harmless). f is non-increasing in t; f(u_[r]) is non-decreasing in the rank r.
        auto boundary = [&](double shift) {  // largest rank r with f(u_[r] + shift) <= k, or -1
          int64_t lo = -1, hi = seqlen_k;    // invariant: f(pt(lo)) <= k, f(pt(hi)) > k
          while (hi - lo > 1) {
            int64_t mid = (lo + hi) / 2;
            if (sw.f(fw, sw.sorted_u[mid] + shift) <= kk + tol)
              lo = mid;
            else
              hi = mid;
          }
          return lo;
        };
        int64_t a = boundary(0.0), c = boundary(-1.0);
        double R = kInf, L = -kInf;
        if (a >= 0) R = std::min(R, sw.sorted_u[a]);
        if (c >= 0) R = std::min(R, sw.sorted_u[c] - 1.0);
        if (a + 1 < seqlen_k) L = std::max(L, sw.sorted_u[a + 1]);
        if (c + 1 < seqlen_k) L = std::max(L, sw.sorted_u[c + 1] - 1.0);
        double tau;
        if (std::abs(sw.f(fw, R) - kk) <= tol || !(L < R)) {
          tau = R;
        } else {
          // No kink in (L, R): classify at the midpoint, solve the linear piece exactly.
          double t = 0.5 * (L + R);
          int64_t c_sat, c_pos;
          double s_sat, s_pos;
          fw.prefix(sw.ranks_ge(t + 1), c_sat, s_sat);
          fw.prefix(sw.ranks_gt(t), c_pos, s_pos);
          int64_t n_act = c_pos - c_sat;
          tau = n_act > 0 ? (double(c_sat) + (s_pos - s_sat) - kk) / double(n_act) : R;
        }
        r.tau = tau;
        int64_t c1, c2;
        double s1, s2;
        fw.prefix(sw.ranks_ge(tau + 1), c1, s1);
        fw.prefix(sw.ranks_gt(tau), c2, s2);
        r.n_active = c2 - c1;
        if (k_select == 0) {
          r.theta_val = kInf;
          r.theta_idx = -1;
        } else {
          int64_t rk = fw.kth(k_select);
          r.theta_idx = sw.order[rk];
          r.theta_val = u[r.theta_idx];
        }
      }
    }
}

namespace {
// Per (b, h, i): the explicit selection (keys by (u, j) descending) and gates.
void select_lists(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                  const double* scores, int64_t k_select, int64_t window,
                  std::vector<std::vector<int64_t>>& idx, std::vector<std::vector<double>>& gate,
                  std::vector<SparseKQuery>& info) {
  info.resize(batch * num_heads_kv * seqlen_q);
  sparsek_operator(batch, seqlen_k, num_heads_kv, seqlen_q, scores, k_select, window, info.data());
  idx.assign(info.size(), {});
  gate.assign(info.size(), {});
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < num_heads_kv; ++h) {
      std::vector<double> u(seqlen_k);
      for (int64_t j = 0; j < seqlen_k; ++j) u[j] = scores[(b * seqlen_k + j) * num_heads_kv + h];
      Sweep sw(u);
      Fenwick fw(seqlen_k);
      int64_t inserted = 0;
      for (int64_t i = 0; i < seqlen_q; ++i) {
        const int64_t slot = (b * num_heads_kv + h) * seqlen_q + i;
        const SparseKQuery& r = info[slot];
        while (inserted < r.n_cand) {
          fw.add(sw.rank_of[inserted], 0.0);
          ++inserted;
        }
        int64_t take = std::min(k_select, r.n_cand);
        for (int64_t t = 1; t <= take; ++t) {
          int64_t j = sw.order[fw.kth(t)];
          idx[slot].push_back(j);
          double g = r.n_cand <= k_select ? 1.0
                     : std::isnan(r.tau)  ? kNaN
                                          : std::clamp(u[j] - r.tau, 0.0, 1.0);
          gate[slot].push_back(g);
        }
      }
    }
}
}  // namespace

void sparsek_selection(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                       const double* scores, int64_t k_select, int64_t window, int64_t* idx,
                       double* gate) {
  std::vector<std::vector<int64_t>> I;
  std::vector<std::vector<double>> G;
  std::vector<SparseKQuery> info;
  select_lists(batch, seqlen_k, num_heads_kv, seqlen_q, scores, k_select, window, I, G, info);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < seqlen_q; ++i)
      for (int64_t h = 0; h < num_heads_kv; ++h) {
        const int64_t slot = (b * num_heads_kv + h) * seqlen_q + i;
        const int64_t base = ((b * seqlen_q + i) * num_heads_kv + h) * k_select;
        for (int64_t t = 0; t < k_select; ++t) {
          bool has = t < int64_t(I[slot].size());
          idx[base + t] = has ? I[slot][t] : -1;
          gate[base + t] = has ? G[slot][t] : 0.0;
        }
      }
}

namespace {
// Key list and gates of U_p = W_p ∪ Sel_p for one (b, kv head, query row).
void union_keys(int64_t p, int64_t window, const std::vector<int64_t>& sel,
                const std::vector<double>& sel_gate, std::vector<int64_t>& keys,
                std::vector<double>& gates, std::vector<char>& is_sel) {
  keys.clear();
  gates.clear();
  is_sel.clear();
  for (size_t t = 0; t < sel.size(); ++t) {
    keys.push_back(sel[t]);
    gates.push_back(sel_gate[t]);
    is_sel.push_back(1);
  }
  if (window > 0)
    for (int64_t j = std::max<int64_t>(0, p - window + 1); j <= p; ++j) {
      keys.push_back(j);
      gates.push_back(1.0);
      is_sel.push_back(0);
    }
}
}  // namespace

void sparsek_attention_fwd(const AttnShape& s, const double* q, const double* k, const double* v,
                           const double* scores, int64_t k_select, int64_t window, double scale,
                           double* out, double* lse) {
  std::vector<std::vector<int64_t>> I;
  std::vector<std::vector<double>> G;
  std::vector<SparseKQuery> info;
  select_lists(s.batch, s.seqlen_k, s.num_heads_kv, s.seqlen_q, scores, k_select, window, I, G,
               info);
  const int64_t rep = s.num_heads / s.num_heads_kv, D = s.head_dim;
  std::vector<int64_t> keys;
  std::vector<double> gates;
  std::vector<char> is_sel;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i = 0; i < s.seqlen_q; ++i)
      for (int64_t h = 0; h < s.num_heads; ++h) {
        const int64_t hk = h / rep, slot = (b * s.num_heads_kv + hk) * s.seqlen_q + i;
        const int64_t p = s.seqlen_k - s.seqlen_q + i;
        double* l = lse ? lse + (b * s.num_heads + h) * s.seqlen_q + i : nullptr;
        if (std::isnan(info[slot].tau)) {
          double* o = out + qidx(s, b, i, h);
          for (int64_t d = 0; d < D; ++d) o[d] = kNaN;
          if (l) *l = kNaN;
          continue;
        }
        union_keys(p, window, I[slot], G[slot], keys, gates, is_sel);
        attend_row(s, q, k, v, b, i, h, keys, gates, scale, out, l, nullptr);
      }
}

void sparsek_attention_bwd(const AttnShape& s, const double* q, const double* k, const double* v,
                           const double* scores, int64_t k_select, int64_t window, double scale,
                           const double* dout, const double* dlse, double* dq, double* dk,
                           double* dv, double* dscores) {
  std::vector<std::vector<int64_t>> I;
  std::vector<std::vector<double>> G;
  std::vector<SparseKQuery> info;
  select_lists(s.batch, s.seqlen_k, s.num_heads_kv, s.seqlen_q, scores, k_select, window, I, G,
               info);
  const int64_t rep = s.num_heads / s.num_heads_kv, D = s.head_dim;
  std::fill(dq, dq + s.batch * s.seqlen_q * s.num_heads * D, 0.0);
  std::fill(dk, dk + s.batch * s.seqlen_k * s.num_heads_kv * D, 0.0);
  std::fill(dv, dv + s.batch * s.seqlen_k * s.num_heads_kv * D, 0.0);
  std::fill(dscores, dscores + s.batch * s.seqlen_k * s.num_heads_kv, 0.0);
  std::vector<int64_t> keys;
  std::vector<double> gates, probs, o(D), Gsum;
  std::vector<char> is_sel;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t hk = 0; hk < s.num_heads_kv; ++hk) {
      std::vector<double> u(s.seqlen_k);
      for (int64_t j = 0; j < s.seqlen_k; ++j)
        u[j] = scores[(b * s.seqlen_k + j) * s.num_heads_kv + hk];
      for (int64_t i = 0; i < s.seqlen_q; ++i) {
        const int64_t slot = (b * s.num_heads_kv + hk) * s.seqlen_q + i;
        const int64_t p = s.seqlen_k - s.seqlen_q + i;
        const SparseKQuery& r = info[slot];
        if (std::isnan(r.tau)) continue;  // NaN rows contribute no gradient
        union_keys(p, window, I[slot], G[slot], keys, gates, is_sel);
        Gsum.assign(keys.size(), 0.0);
        for (int64_t h = hk * rep; h < (hk + 1) * rep; ++h) {
          const double* qr = q + qidx(s, b, i, h);
          const double* dor = dout + qidx(s, b, i, h);
          if (keys.empty()) continue;
          double mx = -kInf;
          probs.assign(keys.size(), 0.0);
          for (size_t t = 0; t < keys.size(); ++t) {
            const double* kr = k + kidx(s, b, keys[t], hk);
            double acc = 0;
            for (int64_t d = 0; d < D; ++d) acc += qr[d] * kr[d];
            probs[t] = acc * scale;
            mx = std::max(mx, probs[t]);
          }
          double sum = 0;
          for (auto& x : probs) sum += (x = std::exp(x - mx));
          for (auto& x : probs) x /= sum;
          std::fill(o.begin(), o.end(), 0.0);
          for (size_t t = 0; t < keys.size(); ++t) {
            const double* vr = v + kidx(s, b, keys[t], hk);
            for (int64_t d = 0; d < D; ++d) o[d] += probs[t] * gates[t] * vr[d];
          }
          double Dp = 0;
          for (int64_t d = 0; d < D; ++d) Dp += dor[d] * o[d];
          double g_lse = dlse ? dlse[(b * s.num_heads + h) * s.seqlen_q + i] : 0.0;
          for (size_t t = 0; t < keys.size(); ++t) {
            const double* kr = k + kidx(s, b, keys[t], hk);
            const double* vr = v + kidx(s, b, keys[t], hk);
            double dov = 0;
            for (int64_t d = 0; d < D; ++d) dov += dor[d] * vr[d];
            Gsum[t] += probs[t] * dov;
            double dS = probs[t] * (gates[t] * dov - Dp) + probs[t] * g_lse;
            double* dkr = dk + kidx(s, b, keys[t], hk);
            double* dvr = dv + kidx(s, b, keys[t], hk);
            double* dqr = dq + qidx(s, b, i, h);
            for (int64_t d = 0; d < D; ++d) {
              dvr[d] += probs[t] * gates[t] * dor[d];
              dqr[d] += scale * dS * kr[d];
              dkr[d] += scale * dS * qr[d];
            }
          }
        }
        // Through the operator: only when n_p > k (gates depend on tau) and |A_p| > 0.
        if (r.n_cand <= k_select || r.n_active == 0) continue;
        const int64_t last = window > 0 ? p - window : p;
        double c = 0;
        for (size_t t = 0; t < keys.size(); ++t)
          if (is_sel[t] && u[keys[t]] > r.tau && u[keys[t]] < r.tau + 1) c += Gsum[t];
        c /= double(r.n_active);
        double* du = dscores + b * s.seqlen_k * s.num_heads_kv + hk;
        for (size_t t = 0; t < keys.size(); ++t)
          if (is_sel[t] && u[keys[t]] > r.tau && u[keys[t]] < r.tau + 1)
            du[keys[t] * s.num_heads_kv] += Gsum[t];
        for (int64_t j = 0; j <= last; ++j)  // the -c_p term over A_p
          if (u[j] > r.tau && u[j] < r.tau + 1) du[j * s.num_heads_kv] -= c;
      }
    }
}

}  // namespace bsk::ref
