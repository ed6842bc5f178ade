// Checks and conversions shared by the attention and SparseK entry points.
#pragma once

#include <limits>

#include "api/host_tensor.h"
#include "api/validate.h"
#include "kernels/kernels.h"

namespace bsk::detail {

struct AttnDims {
  int64_t B = 0, Sq = 0, Sk = 0, H = 0, Hkv = 0, D = 0;
};

inline AttnDims check_qkv(const Checker& c, const TensorView& q, const TensorView& k,
                          const TensorView& v, bool sparsek) {
  c.defined("q", q);
  c.defined("k", k);
  c.defined("v", v);
  c.ndim("q", q, 4);
  c.ndim("k", k, 4);
  c.ndim("v", v, 4);
  c.float_input("q", q);
  c.dtype("k", k, q.dtype);
  c.dtype("v", v, q.dtype);
  c.same_device("k", k, q);
  c.same_device("v", v, q);
  AttnDims d{q.sizes[0], q.sizes[1], k.sizes[1], q.sizes[2], k.sizes[2], q.sizes[3]};
  if (k.sizes[0] != d.B)
    c.fail("k",
           "batch size " + std::to_string(k.sizes[0]) + " differs from q's " + std::to_string(d.B));
  if (k.sizes[3] != d.D)
    c.fail("k",
           "head dim " + std::to_string(k.sizes[3]) + " differs from q's " + std::to_string(d.D));
  c.shape("v", v, {d.B, d.Sk, d.Hkv, d.D}, "[B, Sk, Hkv, D] (like k)");
  if (d.Hkv == 0 || d.H % d.Hkv != 0)
    c.fail("k", "number of query heads (" + std::to_string(d.H) +
                    ") must be a multiple of the number of key/value heads (" +
                    std::to_string(d.Hkv) + ")");
  if (d.D <= 0) c.fail("q", "head dim must be positive");
  if (q.device == Device::kCUDA) {
    if (d.D != 64 && d.D != 128)
      c.fail("q", "head dim must be 64 or 128 on CUDA, got " + std::to_string(d.D));
    if (d.Sk >= (int64_t{1} << 31) || d.Sq >= (int64_t{1} << 31))
      c.fail("k", "sequence length must be < 2^31");
  }
  if (sparsek && d.Sq > d.Sk)
    c.fail("q", "SparseK needs seqlen_q <= seqlen_k (queries are end-aligned), got " +
                    std::to_string(d.Sq) + " > " + std::to_string(d.Sk));
  c.strided_rows("q", q);
  c.strided_rows("k", k);
  c.strided_rows("v", v);
  return d;
}

inline void check_like(const Checker& c, const char* arg, const TensorView& t,
                       const TensorView& like) {
  c.defined(arg, t);
  c.ndim(arg, t, like.ndim);
  for (int i = 0; i < like.ndim; ++i)
    if (t.sizes[i] != like.sizes[i])
      c.fail(arg, "must have shape " + shape_str(like) + ", got " + shape_str(t));
  c.dtype(arg, t, like.dtype);
  c.same_device(arg, t, like);
  c.strided_rows(arg, t);
}

// Optional [B, H, Sq] float32 contiguous tensor.
inline void check_lse(const Checker& c, const char* arg, const TensorView& t, const TensorView& q,
                      const AttnDims& d) {
  if (!t.defined) return;
  c.shape(arg, t, {d.B, d.H, d.Sq}, "[B, H, Sq]");
  c.dtype(arg, t, DType::kFloat32);
  c.same_device(arg, t, q);
  c.contiguous(arg, t);
  if (t.data == nullptr && t.numel() > 0) c.fail(arg, "has a null data pointer");
}

inline void check_k_window(const Checker& c, int64_t k_select, int64_t window) {
  if (k_select < 0) c.fail("k_select", "must be >= 0, got " + std::to_string(k_select));
  if (window < 0) c.fail("window", "must be >= 0, got " + std::to_string(window));
  if (k_select == 0 && window == 0)
    c.fail("k_select", "k_select and window must not both be 0 (no key would be attended)");
}

inline kernels::AttnFwdParams attn_params(const TensorView& q, const TensorView& k,
                                          const TensorView& v, const TensorView& o,
                                          const TensorView& lse, const AttnDims& d) {
  kernels::AttnFwdParams p;
  p.dtype = q.dtype;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.o = o.data;
  p.lse = lse.defined ? static_cast<float*>(lse.data) : nullptr;
  p.batch = d.B;
  p.seqlen_q = d.Sq;
  p.seqlen_k = d.Sk;
  p.num_heads = d.H;
  p.num_heads_kv = d.Hkv;
  p.head_dim = d.D;
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q.strides[i];
    p.k_stride[i] = k.strides[i];
    p.v_stride[i] = v.strides[i];
    p.o_stride[i] = o.strides[i];
  }
  return p;
}

}  // namespace bsk::detail
