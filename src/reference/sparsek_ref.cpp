// SparseK references (double precision): the operator (tau, theta, n_active), the explicit
// selection, value-gated attention forward/backward and the operator's backward.
// See include/bsk/reference.h and SPEC section 1.
//
// Per (batch, kv head) everything is one sweep over the query rows in order. The keys are sorted
// once by (u_j, j) descending ("ranks"); candidates are inserted in j order as p advances into a
// Fenwick tree over ranks holding their count and score sum. For a row, f(t) = sum_{C_p}
// clip(u_j - t, 0, 1) at any t costs two binary searches (the rank boundaries of "u > t" and
// "u >= t + 1") plus two prefix queries; a binary search over the breakpoints {u_j, u_j - 1}
// finds the linear piece where f crosses k, solved in closed form. theta is a k-th-order
// statistic descent on the count tree. Cost O(Sk log Sk + Sq log^2 Sk) per (batch, kv head).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "bsk/reference.h"
#include "reference/ref_internal.h"

namespace bsk::ref {
namespace {

using detail::kInf;
using detail::kNaN;
using ld = long double;  // sums of scores: tau is then accurate to about one double ulp

// Fenwick tree over ranks: count and score sum of the inserted keys.
class CountSumTree {
 public:
  explicit CountSumTree(int64_t n) : n_(n), cnt_(n + 1, 0), sum_(n + 1, 0) {
    while ((top_ << 1) <= n_) top_ <<= 1;
  }
  void add(int64_t r, ld x) {
    for (int64_t i = r + 1; i <= n_; i += i & -i) {
      cnt_[i] += 1;
      sum_[i] += x;
    }
  }
  // Count and sum over ranks [0, r).
  void prefix(int64_t r, int64_t& c, ld& s) const {
    c = 0;
    s = 0;
    for (int64_t i = r; i > 0; i -= i & -i) {
      c += cnt_[i];
      s += sum_[i];
    }
  }
  int64_t count(int64_t r) const {
    int64_t c = 0;
    for (int64_t i = r; i > 0; i -= i & -i) c += cnt_[i];
    return c;
  }
  // 0-based rank of the kk-th (1-based) inserted key in rank order; requires kk <= inserted.
  int64_t kth(int64_t kk) const {
    int64_t pos = 0;
    for (int64_t step = top_; step > 0; step >>= 1)
      if (pos + step <= n_ && cnt_[pos + step] < kk) {
        pos += step;
        kk -= cnt_[pos];
      }
    return pos;
  }

 private:
  int64_t n_, top_ = 1;
  std::vector<int64_t> cnt_;
  std::vector<ld> sum_;
};

// Fenwick tree over ranks with range add and point query.
class RangeAddTree {
 public:
  explicit RangeAddTree(int64_t n) : n_(n), t_(n + 2, 0) {}
  void add(int64_t lo, int64_t hi, ld x) {  // ranks [lo, hi)
    if (lo >= hi) return;
    for (int64_t i = lo + 1; i <= n_ + 1; i += i & -i) t_[i] += x;
    for (int64_t i = hi + 1; i <= n_ + 1; i += i & -i) t_[i] -= x;
  }
  ld at(int64_t r) const {
    ld s = 0;
    for (int64_t i = r + 1; i > 0; i -= i & -i) s += t_[i];
    return s;
  }

 private:
  int64_t n_;
  std::vector<ld> t_;
};

// The SparseK operator of one (batch, kv head), swept over query positions in increasing order.
class HeadSweep {
 public:
  HeadSweep(const double* scores, int64_t seqlen_k, int64_t stride, int64_t k_select,
            int64_t window)
      : S_(seqlen_k),
        k_(k_select),
        window_(window),
        u_(seqlen_k),
        order_(seqlen_k),
        rank_of_(seqlen_k),
        v_(seqlen_k),
        tree_(seqlen_k) {
    for (int64_t j = 0; j < S_; ++j) u_[j] = scores[j * stride];
    // NaN sorts as +inf (only the order of the rows with n_p <= k can see it); ties go to the
    // larger j.
    auto key = [&](int64_t j) { return std::isnan(u_[j]) ? kInf : u_[j]; };
    std::iota(order_.begin(), order_.end(), 0);
    std::sort(order_.begin(), order_.end(), [&](int64_t a, int64_t b) {
      const double ka = key(a), kb = key(b);
      return ka != kb ? ka > kb : a > b;
    });
    for (int64_t r = 0; r < S_; ++r) {
      rank_of_[order_[r]] = r;
      v_[r] = key(order_[r]);
    }
  }

  int64_t n_cand(int64_t p) const {
    const int64_t n = window_ > 0 ? p - window_ + 1 : p + 1;
    return std::clamp<int64_t>(n, 0, S_);
  }
  int64_t inserted() const { return inserted_; }
  int64_t rank_of(int64_t j) const { return rank_of_[j]; }
  double u(int64_t j) const { return u_[j]; }

  // Makes C = { j < n } (n non-decreasing over calls). Non-finite scores enter the count tree
  // (for the order of rows with n_p <= k) but not the sums: any row that evaluates f after one
  // of them is inserted is a NaN row and never evaluates f.
  void advance(int64_t n) {
    for (; inserted_ < n; ++inserted_) {
      const double x = u_[inserted_];
      if (!std::isfinite(x)) ++nonfinite_;
      tree_.add(rank_of_[inserted_], std::isfinite(x) ? x : 0.0);
    }
  }

  // The row summary at position p; advances the candidates to C_p.
  SparseKQuery row(int64_t p) {
    SparseKQuery r;
    r.n_cand = n_cand(p);
    advance(r.n_cand);
    r.n_active = 0;
    r.theta_idx = -1;
    if (r.n_cand <= k_) {
      r.tau = -kInf;
      r.theta_val = -kInf;
      return r;
    }
    if (nonfinite_ > 0) {
      r.tau = kNaN;
      r.theta_val = kNaN;
      return r;
    }
    r.tau = solve_tau();
    r.n_active = tree_.count(ranks_gt(r.tau)) - tree_.count(ranks_ge(r.tau + 1.0));
    if (k_ == 0) {
      r.theta_val = kInf;  // nothing selected
    } else {
      r.theta_idx = order_[tree_.kth(k_)];
      r.theta_val = u_[r.theta_idx];
    }
    return r;
  }

  // Sel_p of the current row (r from row()), by (u, j) descending, with its gates. NaN rows
  // select nothing.
  void selection(const SparseKQuery& r, std::vector<int64_t>& idx, std::vector<double>& gate) {
    idx.clear();
    gate.clear();
    if (std::isnan(r.tau)) return;
    const int64_t take = std::min(k_, r.n_cand);
    for (int64_t t = 1; t <= take; ++t) {
      const int64_t j = order_[tree_.kth(t)];
      idx.push_back(j);
      gate.push_back(r.n_cand <= k_ ? 1.0 : std::clamp(u_[j] - r.tau, 0.0, 1.0));
    }
  }

  // Ranks [lo, hi) of all keys with tau < u < tau + 1; its inserted keys are exactly A_p.
  void active_ranks(double tau, int64_t& lo, int64_t& hi) const {
    lo = ranks_ge(tau + 1.0);
    hi = std::max(lo, ranks_gt(tau));
  }

 private:
  // Number of ranks with v > x, and with v >= x (v is descending).
  int64_t ranks_gt(double x) const {
    return std::lower_bound(v_.begin(), v_.end(), x, std::greater<double>()) - v_.begin();
  }
  int64_t ranks_ge(double x) const {
    return std::upper_bound(v_.begin(), v_.end(), x, std::greater<double>()) - v_.begin();
  }

  // A breakpoint t of f with its exact partner t1 = "t + 1": (v, v + 1) or (v - 1, v). Keeping
  // the exact score as the partner classifies the key at a kink exactly even when v - 1 rounds.
  struct Point {
    double t, t1;
  };
  Point point(int fam, int64_t r) const {
    return fam == 0 ? Point{v_[r], v_[r] + 1.0} : Point{v_[r] - 1.0, v_[r]};
  }

  // f(t) = #{u >= t1} + sum_{t < u < t1} (u - t). With no active key the value is an exact
  // integer, so the flat stretches of f (where tau may be a whole interval's left end) compare
  // exactly with k.
  ld f(const Point& x) const {
    int64_t c_sat, c_pos;
    ld s_sat, s_pos;
    tree_.prefix(ranks_ge(x.t1), c_sat, s_sat);
    tree_.prefix(ranks_gt(x.t), c_pos, s_pos);
    const int64_t n_act = c_pos - c_sat;
    return ld(c_sat) + (n_act > 0 ? (s_pos - s_sat) - ld(n_act) * ld(x.t) : ld(0));
  }

  // Largest rank r of family fam with f(point(fam, r)) <= k, or -1 (f(point) is
  // non-decreasing in r).
  int64_t boundary(int fam) const {
    int64_t lo = -1, hi = S_;
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      (f(point(fam, mid)) <= ld(k_) ? lo : hi) = mid;
    }
    return lo;
  }

  // The smallest t with f(t) <= k; requires n_p > k and finite candidate scores.
  double solve_tau() const {
    // R: the smallest breakpoint with f <= k; L: the largest with f > k. The non-candidate keys
    // add breakpoints too, which only splits pieces.
    bool has_r = false, has_l = false;
    Point R{kInf, kInf}, L{-kInf, -kInf};
    for (int fam = 0; fam < 2; ++fam) {
      const int64_t a = boundary(fam);
      if (a >= 0) {
        const Point x = point(fam, a);
        if (!has_r || x.t < R.t || (x.t == R.t && fam == 1)) R = x;
        has_r = true;
      }
      if (a + 1 < S_) {
        const Point x = point(fam, a + 1);
        if (!has_l || x.t > L.t || (x.t == L.t && fam == 1)) L = x;
        has_l = true;
      }
    }
    // f(max u) = 0 <= k and f(min u - 1) = n_p > k, so both exist; guard against rounding.
    if (!has_r || !has_l || !(L.t < R.t)) return R.t;
    if (f(R) == ld(k_)) return R.t;  // e.g. the gap case: f == k on [R, ...]
    // On the open piece (L, R): saturated keys u > L1, active L < u <= L1, and
    // f(t) = n_sat + sum_A u - |A| t = k.
    int64_t c_pos, c_sat;
    ld s_pos, s_sat;
    tree_.prefix(ranks_gt(L.t), c_pos, s_pos);
    tree_.prefix(ranks_gt(L.t1), c_sat, s_sat);
    const int64_t n_act = c_pos - c_sat;
    if (n_act <= 0) return R.t;  // only reachable through rounding
    const ld tau = (ld(c_sat - k_) + (s_pos - s_sat)) / ld(n_act);
    return std::clamp(static_cast<double>(tau), L.t, R.t);
  }

  int64_t S_, k_, window_;
  std::vector<double> u_;
  std::vector<int64_t> order_, rank_of_;  // key by rank, rank by key
  std::vector<double> v_;                 // score by rank (descending; NaN as +inf)
  CountSumTree tree_;
  int64_t inserted_ = 0, nonfinite_ = 0;
};

// d scores through the operator for one (batch, kv head), fed row by row in order:
//   du_j = sum_p [j in A_p] (G_pj [j in Sel_p] - c_p),  c_p = (1/|A_p|) sum_{A_p ∩ Sel_p} G_pj.
// The first term is added directly (O(k) per row). The second adds -c_p to the rank range of
// A_p in a range-add tree; a key's share is the growth of its rank's value between its
// insertion and the end, since A_p holds only inserted keys. O(log S) per row and per key, and
// exact to the definition (no reliance on the monotonicity of tau).
class OperatorGrad {
 public:
  explicit OperatorGrad(int64_t seqlen_k) : tree_(seqlen_k), base_(seqlen_k, 0) {}

  // Call before sw.row(p) for each row.
  void before_row(const HeadSweep& sw, int64_t p) {
    for (int64_t j = sw.inserted(), n = sw.n_cand(p); j < n; ++j)
      base_[j] = tree_.at(sw.rank_of(j));
  }

  // Gate gradients G[t] of the selected keys idx[t] (from sw.selection).
  void add_row(const HeadSweep& sw, const SparseKQuery& r, int64_t k_select,
               const std::vector<int64_t>& idx, const double* G, double* du, int64_t stride) {
    // Only rows with n_p > k (gates depend on tau), finite, with unsaturated keys.
    if (r.n_cand <= k_select || std::isnan(r.tau) || r.n_active == 0) return;
    const double t1 = r.tau + 1.0;
    ld c = 0;
    for (size_t t = 0; t < idx.size(); ++t) {
      const double x = sw.u(idx[t]);
      if (x > r.tau && x < t1) {
        c += G[t];
        du[idx[t] * stride] += G[t];
      }
    }
    int64_t lo, hi;
    sw.active_ranks(r.tau, lo, hi);
    tree_.add(lo, hi, -c / ld(r.n_active));
  }

  void finish(const HeadSweep& sw, double* du, int64_t stride) const {
    for (int64_t j = 0; j < sw.inserted(); ++j)
      du[j * stride] += static_cast<double>(tree_.at(sw.rank_of(j)) - base_[j]);
  }

 private:
  RangeAddTree tree_;
  std::vector<ld> base_;
};

// Key list and gates of U_p = Sel_p ∪ W_p (disjoint: Sel_p ⊆ C_p).
void union_keys(int64_t p, int64_t window, const std::vector<int64_t>& sel,
                const std::vector<double>& sel_gate, std::vector<int64_t>& keys,
                std::vector<double>& gates) {
  keys = sel;
  gates = sel_gate;
  if (window > 0)
    for (int64_t j = std::max<int64_t>(0, p - window + 1); j <= p; ++j) {
      keys.push_back(j);
      gates.push_back(1.0);
    }
}

}  // namespace

void sparsek_operator(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                      const double* scores, int64_t k_select, int64_t window, SparseKQuery* info) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < num_heads_kv; ++h) {
      HeadSweep sw(scores + b * seqlen_k * num_heads_kv + h, seqlen_k, num_heads_kv, k_select,
                   window);
      for (int64_t i = 0; i < seqlen_q; ++i)
        info[(b * num_heads_kv + h) * seqlen_q + i] = sw.row(seqlen_k - seqlen_q + i);
    }
}

void sparsek_selection(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                       const double* scores, int64_t k_select, int64_t window, int64_t* idx,
                       double* gate) {
  std::vector<int64_t> sel;
  std::vector<double> g;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < num_heads_kv; ++h) {
      HeadSweep sw(scores + b * seqlen_k * num_heads_kv + h, seqlen_k, num_heads_kv, k_select,
                   window);
      for (int64_t i = 0; i < seqlen_q; ++i) {
        const SparseKQuery r = sw.row(seqlen_k - seqlen_q + i);
        sw.selection(r, sel, g);
        const bool dead = std::isnan(r.tau);
        const int64_t base = ((b * seqlen_q + i) * num_heads_kv + h) * k_select;
        for (int64_t t = 0; t < k_select; ++t) {
          const bool has = t < static_cast<int64_t>(sel.size());
          idx[base + t] = has ? sel[t] : -1;
          gate[base + t] = has ? g[t] : (dead ? kNaN : 0.0);
        }
      }
    }
}

void sparsek_selection_bwd(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                           const double* scores, int64_t k_select, int64_t window,
                           const double* dgate, double* dscores) {
  std::fill(dscores, dscores + batch * seqlen_k * num_heads_kv, 0.0);
  std::vector<int64_t> sel;
  std::vector<double> g;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < num_heads_kv; ++h) {
      const int64_t off = b * seqlen_k * num_heads_kv + h;
      HeadSweep sw(scores + off, seqlen_k, num_heads_kv, k_select, window);
      OperatorGrad og(seqlen_k);
      for (int64_t i = 0; i < seqlen_q; ++i) {
        const int64_t p = seqlen_k - seqlen_q + i;
        og.before_row(sw, p);
        const SparseKQuery r = sw.row(p);
        sw.selection(r, sel, g);
        og.add_row(sw, r, k_select, sel, dgate + ((b * seqlen_q + i) * num_heads_kv + h) * k_select,
                   dscores + off, num_heads_kv);
      }
      og.finish(sw, dscores + off, num_heads_kv);
    }
}

void sparsek_attention_fwd(const AttnShape& s, const double* q, const double* k, const double* v,
                           const double* scores, int64_t k_select, int64_t window, double scale,
                           double* out, double* lse) {
  const int64_t rep = s.num_heads / s.num_heads_kv, D = s.head_dim;
  std::vector<int64_t> sel, keys;
  std::vector<double> sg, gates;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t hk = 0; hk < s.num_heads_kv; ++hk) {
      HeadSweep sw(scores + b * s.seqlen_k * s.num_heads_kv + hk, s.seqlen_k, s.num_heads_kv,
                   k_select, window);
      for (int64_t i = 0; i < s.seqlen_q; ++i) {
        const int64_t p = s.seqlen_k - s.seqlen_q + i;
        const SparseKQuery r = sw.row(p);
        const bool dead = std::isnan(r.tau);
        if (!dead) {
          sw.selection(r, sel, sg);
          union_keys(p, window, sel, sg, keys, gates);
        }
        for (int64_t h = hk * rep; h < (hk + 1) * rep; ++h) {
          double* o = out + detail::q_off(s, b, i, h);
          double l = kNaN;
          if (dead)
            std::fill(o, o + D, kNaN);
          else
            l = detail::attend_row_fwd(s, q, k, v, b, i, h, keys.data(), gates.data(),
                                       static_cast<int64_t>(keys.size()), scale, o);
          if (lse) lse[detail::lse_off(s, b, h, i)] = l;
        }
      }
    }
}

void sparsek_attention_bwd(const AttnShape& s, const double* q, const double* k, const double* v,
                           const double* scores, int64_t k_select, int64_t window, double scale,
                           const double* dout, const double* dlse, double* dq, double* dk,
                           double* dv, double* dscores) {
  const int64_t rep = s.num_heads / s.num_heads_kv;
  const int64_t nq = s.batch * s.seqlen_q * s.num_heads * s.head_dim;
  const int64_t nk = s.batch * s.seqlen_k * s.num_heads_kv * s.head_dim;
  std::fill(dq, dq + nq, 0.0);
  std::fill(dk, dk + nk, 0.0);
  std::fill(dv, dv + nk, 0.0);
  std::fill(dscores, dscores + s.batch * s.seqlen_k * s.num_heads_kv, 0.0);
  std::vector<int64_t> sel, keys;
  std::vector<double> sg, gates, G;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t hk = 0; hk < s.num_heads_kv; ++hk) {
      const int64_t off = b * s.seqlen_k * s.num_heads_kv + hk;
      HeadSweep sw(scores + off, s.seqlen_k, s.num_heads_kv, k_select, window);
      OperatorGrad og(s.seqlen_k);
      for (int64_t i = 0; i < s.seqlen_q; ++i) {
        const int64_t p = s.seqlen_k - s.seqlen_q + i;
        og.before_row(sw, p);
        const SparseKQuery r = sw.row(p);
        // A NaN row's outputs are NaN whatever the inputs: it contributes no gradient (as in the
        // PyTorch reference).
        if (std::isnan(r.tau)) continue;
        sw.selection(r, sel, sg);
        union_keys(p, window, sel, sg, keys, gates);
        G.assign(keys.size(), 0.0);  // G_pj summed over the query heads of the group
        for (int64_t h = hk * rep; h < (hk + 1) * rep; ++h)
          detail::attend_row_bwd(s, q, k, v, dout, dlse ? dlse[detail::lse_off(s, b, h, i)] : 0.0,
                                 b, i, h, keys.data(), gates.data(),
                                 static_cast<int64_t>(keys.size()), scale, dq, dk, dv, G.data());
        og.add_row(sw, r, k_select, sel, G.data(), dscores + off, s.num_heads_kv);
      }
      og.finish(sw, dscores + off, s.num_heads_kv);
    }
}

}  // namespace bsk::ref
