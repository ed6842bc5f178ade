// Internals shared by the CPU reference translation units (attention_ref.cpp, sparsek_ref.cpp).
#pragma once

#include <cstdint>
#include <limits>

#include "bsk/reference.h"

namespace bsk::ref::detail {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

inline int64_t q_off(const AttnShape& s, int64_t b, int64_t i, int64_t h) {
  return ((b * s.seqlen_q + i) * s.num_heads + h) * s.head_dim;
}
inline int64_t kv_off(const AttnShape& s, int64_t b, int64_t j, int64_t hk) {
  return ((b * s.seqlen_k + j) * s.num_heads_kv + hk) * s.head_dim;
}
inline int64_t lse_off(const AttnShape& s, int64_t b, int64_t h, int64_t i) {
  return (b * s.num_heads + h) * s.seqlen_q + i;
}

// One query row (b, i, h) attending to an explicit key list keys[0..n) of kv head
// h / (H / Hkv), with value gates (nullptr: all 1). Writes the output row and returns the lse
// (ungated). An empty list gives out 0 and lse -inf.
double attend_row_fwd(const AttnShape& s, const double* q, const double* k, const double* v,
                      int64_t b, int64_t i, int64_t h, const int64_t* keys, const double* gates,
                      int64_t n, double scale, double* out_row);

// Backward of attend_row_fwd for the same row: accumulates into dq (row), dk, dv (full arrays)
// and, when dgate is not null, dgate[t] += P_t (dO . v_t), the gradient w.r.t. gates[t].
// dlse_val is the incoming lse gradient of this row (0 when there is none).
void attend_row_bwd(const AttnShape& s, const double* q, const double* k, const double* v,
                    const double* dout, double dlse_val, int64_t b, int64_t i, int64_t h,
                    const int64_t* keys, const double* gates, int64_t n, double scale, double* dq,
                    double* dk, double* dv, double* dgate);

}  // namespace bsk::ref::detail
