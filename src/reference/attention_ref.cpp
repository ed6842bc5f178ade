// Dense attention reference (double precision) and the per-row attention over an explicit key
// list that the SparseK reference reuses. See include/bsk/reference.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "bsk/reference.h"
#include "reference/ref_internal.h"

namespace bsk::ref {
namespace detail {
namespace {

// Softmax probabilities of the row over keys[0..n) (stable: the row max is subtracted). Returns
// the lse; probs gets n entries.
double row_probs(const AttnShape& s, const double* q, const double* k, int64_t b, int64_t i,
                 int64_t h, const int64_t* keys, int64_t n, double scale,
                 std::vector<double>& probs) {
  const int64_t D = s.head_dim, hk = h / (s.num_heads / s.num_heads_kv);
  const double* qr = q + q_off(s, b, i, h);
  probs.resize(static_cast<size_t>(n));
  double mx = -kInf;
  for (int64_t t = 0; t < n; ++t) {
    const double* kr = k + kv_off(s, b, keys[t], hk);
    double acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += qr[d] * kr[d];
    probs[t] = acc * scale;
    mx = std::max(mx, probs[t]);
  }
  if (n == 0) return -kInf;
  double sum = 0;
  for (auto& x : probs) sum += (x = std::exp(x - mx));
  for (auto& x : probs) x /= sum;
  return mx + std::log(sum);
}

}  // namespace

double attend_row_fwd(const AttnShape& s, const double* q, const double* k, const double* v,
                      int64_t b, int64_t i, int64_t h, const int64_t* keys, const double* gates,
                      int64_t n, double scale, double* out_row) {
  const int64_t D = s.head_dim, hk = h / (s.num_heads / s.num_heads_kv);
  std::vector<double> probs;
  const double lse = row_probs(s, q, k, b, i, h, keys, n, scale, probs);
  std::fill(out_row, out_row + D, 0.0);
  for (int64_t t = 0; t < n; ++t) {
    const double w = probs[t] * (gates ? gates[t] : 1.0);
    const double* vr = v + kv_off(s, b, keys[t], hk);
    for (int64_t d = 0; d < D; ++d) out_row[d] += w * vr[d];
  }
  return lse;
}

void attend_row_bwd(const AttnShape& s, const double* q, const double* k, const double* v,
                    const double* dout, double dlse_val, int64_t b, int64_t i, int64_t h,
                    const int64_t* keys, const double* gates, int64_t n, double scale, double* dq,
                    double* dk, double* dv, double* dgate) {
  if (n == 0) return;  // no key: the row is a constant (out 0, lse -inf)
  const int64_t D = s.head_dim, hk = h / (s.num_heads / s.num_heads_kv);
  std::vector<double> probs, o(static_cast<size_t>(D), 0.0), dov(static_cast<size_t>(n));
  row_probs(s, q, k, b, i, h, keys, n, scale, probs);
  const double* qr = q + q_off(s, b, i, h);
  const double* dor = dout + q_off(s, b, i, h);
  double* dqr = dq + q_off(s, b, i, h);
  for (int64_t t = 0; t < n; ++t) {
    const double* vr = v + kv_off(s, b, keys[t], hk);
    const double w = probs[t] * (gates ? gates[t] : 1.0);
    double acc = 0;
    for (int64_t d = 0; d < D; ++d) {
      o[d] += w * vr[d];
      acc += dor[d] * vr[d];
    }
    dov[t] = acc;
  }
  double Dp = 0;  // D_p = dO . o (o gated, as the forward produced it)
  for (int64_t d = 0; d < D; ++d) Dp += dor[d] * o[d];
  for (int64_t t = 0; t < n; ++t) {
    const double g = gates ? gates[t] : 1.0, P = probs[t];
    // d lse / d s_t = P_t, so dlse enters dS like a constant shift of dP.
    const double dS = P * (g * dov[t] - Dp + dlse_val);
    const double* kr = k + kv_off(s, b, keys[t], hk);
    double* dkr = dk + kv_off(s, b, keys[t], hk);
    double* dvr = dv + kv_off(s, b, keys[t], hk);
    for (int64_t d = 0; d < D; ++d) {
      dvr[d] += P * g * dor[d];
      dqr[d] += scale * dS * kr[d];
      dkr[d] += scale * dS * qr[d];
    }
    if (dgate) dgate[t] += P * dov[t];
  }
}

}  // namespace detail

namespace {
// Keys 0..last of a dense row; last < 0 means none.
int64_t dense_last(const AttnShape& s, int64_t i, bool causal) {
  return causal ? std::min(s.seqlen_k - 1, s.seqlen_k - s.seqlen_q + i) : s.seqlen_k - 1;
}
}  // namespace

void attention_fwd(const AttnShape& s, const double* q, const double* k, const double* v,
                   bool causal, double scale, double* out, double* lse) {
  std::vector<int64_t> keys(static_cast<size_t>(std::max<int64_t>(s.seqlen_k, 0)));
  for (int64_t j = 0; j < s.seqlen_k; ++j) keys[j] = j;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i = 0; i < s.seqlen_q; ++i) {
      const int64_t n = std::max<int64_t>(dense_last(s, i, causal) + 1, 0);
      for (int64_t h = 0; h < s.num_heads; ++h) {
        const double l = detail::attend_row_fwd(s, q, k, v, b, i, h, keys.data(), nullptr, n, scale,
                                                out + detail::q_off(s, b, i, h));
        if (lse) lse[detail::lse_off(s, b, h, i)] = l;
      }
    }
}

void attention_bwd(const AttnShape& s, const double* q, const double* k, const double* v,
                   const double* dout, const double* dlse, bool causal, double scale, double* dq,
                   double* dk, double* dv) {
  const int64_t nq = s.batch * s.seqlen_q * s.num_heads * s.head_dim;
  const int64_t nk = s.batch * s.seqlen_k * s.num_heads_kv * s.head_dim;
  std::fill(dq, dq + nq, 0.0);
  std::fill(dk, dk + nk, 0.0);
  std::fill(dv, dv + nk, 0.0);
  std::vector<int64_t> keys(static_cast<size_t>(std::max<int64_t>(s.seqlen_k, 0)));
  for (int64_t j = 0; j < s.seqlen_k; ++j) keys[j] = j;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i = 0; i < s.seqlen_q; ++i) {
      const int64_t n = std::max<int64_t>(dense_last(s, i, causal) + 1, 0);
      for (int64_t h = 0; h < s.num_heads; ++h)
        detail::attend_row_bwd(s, q, k, v, dout, dlse ? dlse[detail::lse_off(s, b, h, i)] : 0.0, b,
                               i, h, keys.data(), nullptr, n, scale, dq, dk, dv, nullptr);
    }
}

}  // namespace bsk::ref
