// Exact CPU references (double precision throughout). They are the ground truth every kernel is
// tested against. All arrays are dense, contiguous, row-major, in the layouts named below.
//
// Semantics: ../../docs/semantics.md and SPEC section 1. Summary for a query at absolute position
// p = Sk - Sq + i:
//   window  W_p = { j : max(0, p - window + 1) <= j <= p }           (empty when window == 0)
//   cands   C_p = { j : 0 <= j <= p - window }                        (j <= p when window == 0)
//   n_p = |C_p|; if n_p <= k: Sel_p = C_p with gates 1.
//   else tau_p = the smallest t with sum_{j in C_p} clip(u_j - t, 0, 1) <= k (== k there),
//        Sel_p = the k candidates with the largest (u_j, j), gate m_pj = clip(u_j - tau_p, 0, 1).
//   Non-finite scores: if n_p > k and some u_j (j in C_p) is NaN or +-inf, tau_p = NaN and the
//   attention row of p is NaN. (When n_p <= k the scores are not used.)
// Conventions at the edges (shared with python/blackwell_sparsek/reference.py):
//   n_p <= k:          tau = -inf, theta = (-inf, -1), n_active = 0, every candidate selected
//                      with gate 1 (ordered by (u, j) descending, NaN ordered as +inf).
//   n_p > k, non-finite candidate ("NaN row"): tau = NaN, theta = (NaN, -1), n_active = 0,
//                      nothing selected (idx -1, gate NaN in all k slots), out and lse NaN; such
//                      a row contributes no gradient (its outputs are NaN constants).
//   n_p > k == 0:      tau = max_{C_p} u, theta = (+inf, -1) (nothing selected), n_active = 0.
//   U_p empty (only k == 0 and window == 0, which the API rejects): out 0, lse -inf.
//   tau is computed from the linear piece of f that crosses k, in closed form; when f == k at a
//   breakpoint (e.g. the k-th and (k+1)-th scores are >= 1 apart) tau is that breakpoint
//   exactly. n_active is counted as #{ u_j > tau } - #{ u_j >= tau + 1 } with tau + 1 rounded.
#pragma once

#include <cstdint>
#include <vector>

namespace bsk::ref {

struct AttnShape {
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, num_heads = 0, num_heads_kv = 0, head_dim = 0;
};

// Dense attention. q [B,Sq,H,D], k/v [B,Sk,Hkv,D], out [B,Sq,H,D], lse [B,H,Sq] (nullable).
// Causal is end-aligned: row i sees keys j <= Sk - Sq + i. A row that sees no key (causal with
// Sq > Sk) gets out = 0 and lse = -inf.
void attention_fwd(const AttnShape& s, const double* q, const double* k, const double* v,
                   bool causal, double scale, double* out, double* lse);

// Gradients of attention_fwd given dout [B,Sq,H,D] and optional dlse [B,H,Sq] (nullable).
// dq like q, dk/dv like k (summed over the query heads of a KV group).
void attention_bwd(const AttnShape& s, const double* q, const double* k, const double* v,
                   const double* dout, const double* dlse, bool causal, double scale, double* dq,
                   double* dk, double* dv);

// The SparseK operator summary for one query position.
struct SparseKQuery {
  double tau = 0;          // -inf when n_cand <= k; NaN on non-finite candidate scores
  double theta_val = 0;    // value of the k-th selected key; -inf when all selected
  int64_t theta_idx = -1;  // its index; -1 when all selected
  int64_t n_cand = 0;      // n_p
  int64_t n_active = 0;    // |A_p| = #{ j in C_p : tau < u_j < tau + 1 }; 0 when n_cand <= k
};

// For every (b, hkv, i): info[(b * Hkv + h) * Sq + i]. scores [B,Sk,Hkv]. Exact (double), and
// O(Sk log^2 Sk) per (b, hkv): it must not be quadratic. Requires 0 <= Sq <= Sk.
void sparsek_operator(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                      const double* scores, int64_t k_select, int64_t window, SparseKQuery* info);

// The explicit selection: idx [B,Sq,Hkv,kk] (int64) and gate [B,Sq,Hkv,kk] with kk = k_select,
// sorted by (u_j, j) descending, padded with idx = -1, gate = 0. Non-finite case: gates NaN.
void sparsek_selection(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                       const double* scores, int64_t k_select, int64_t window, int64_t* idx,
                       double* gate);

// Vector-Jacobian product of sparsek_selection's gates w.r.t. the scores: given dgate
// [B,Sq,Hkv,kk] (padding slots ignored), writes dscores [B,Sk,Hkv] =
//   sum_p sum_{j in A_p} (dgate_pj [j in Sel_p] - c_p),  c_p = (1/|A_p|) sum_{A_p ∩ Sel_p} dgate_pj
// over the rows with n_p > k (d tau_p / d u_j = [j in A_p] / |A_p|; a gate moves with u_j - tau_p
// only when j in A_p). O(Sk log Sk + Sq (k + log Sk) log Sk) per (b, hkv).
void sparsek_selection_bwd(int64_t batch, int64_t seqlen_k, int64_t num_heads_kv, int64_t seqlen_q,
                           const double* scores, int64_t k_select, int64_t window,
                           const double* dgate, double* dscores);

// SparseK attention forward (value gating). scores [B,Sk,Hkv]; lse nullable.
void sparsek_attention_fwd(const AttnShape& s, const double* q, const double* k, const double* v,
                           const double* scores, int64_t k_select, int64_t window, double scale,
                           double* out, double* lse);

// SparseK attention backward, including d(scores) through the SparseK operator (SPEC section 1).
// dlse nullable. dscores [B,Sk,Hkv].
void sparsek_attention_bwd(const AttnShape& s, const double* q, const double* k, const double* v,
                           const double* scores, int64_t k_select, int64_t window, double scale,
                           const double* dout, const double* dlse, double* dq, double* dk,
                           double* dv, double* dscores);

}  // namespace bsk::ref
