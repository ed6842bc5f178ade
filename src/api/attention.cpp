// Dense attention entry points: validation, CPU reference path, CUDA dispatch.
#include <vector>

#include "api/common.h"
#include "bsk/api.h"
#include "bsk/reference.h"
#include "kernels/kernels.h"

namespace bsk {

using detail::Checker;

void attention_fwd(const AttentionFwdArgs& a) {
  Checker c("attention_fwd");
  detail::AttnDims d = detail::check_qkv(c, a.q, a.k, a.v, /*sparsek=*/false);
  c.defined("out", a.out);
  c.shape("out", a.out, {d.B, d.Sq, d.H, d.D}, "[B, Sq, H, D]");
  c.dtype("out", a.out, a.q.dtype);
  c.same_device("out", a.out, a.q);
  c.strided_rows("out", a.out);
  detail::check_lse(c, "lse", a.lse, a.q, d);
  float scale = c.scale(a.scale, d.D);
  if (d.B == 0 || d.Sq == 0 || d.H == 0) return;

  if (a.q.device == Device::kCPU) {
    ref::AttnShape s{d.B, d.Sq, d.Sk, d.H, d.Hkv, d.D};
    auto q = detail::to_dense(a.q), k = detail::to_dense(a.k), v = detail::to_dense(a.v);
    std::vector<double> out(q.size()), lse(static_cast<size_t>(d.B * d.H * d.Sq));
    ref::attention_fwd(s, q.data(), k.data(), v.data(), a.causal, scale, out.data(), lse.data());
    detail::from_dense(a.out, out);
    if (a.lse.defined) detail::from_dense(a.lse, lse);
    return;
  }
  kernels::AttnFwdParams p = detail::attn_params(a.q, a.k, a.v, a.out, a.lse, d);
  p.causal = a.causal;
  p.scale = scale;
  p.stream = a.stream;
  kernels::attention_fwd(p);
}

void attention_bwd(const AttentionBwdArgs& a) {
  Checker c("attention_bwd");
  detail::AttnDims d = detail::check_qkv(c, a.q, a.k, a.v, /*sparsek=*/false);
  detail::check_like(c, "out", a.out, a.q);
  detail::check_like(c, "dout", a.dout, a.q);
  detail::check_like(c, "dq", a.dq, a.q);
  detail::check_like(c, "dk", a.dk, a.k);
  detail::check_like(c, "dv", a.dv, a.v);
  c.defined("lse", a.lse);
  detail::check_lse(c, "lse", a.lse, a.q, d);
  detail::check_lse(c, "dlse", a.dlse, a.q, d);
  float scale = c.scale(a.scale, d.D);
  if (a.q.device != Device::kCPU)
    throw NotImplemented(
        "attention_bwd: the CUDA backward is not implemented in this build; use the PyTorch "
        "implementation (blackwell_sparsek.reference.attention_bwd_ref)");
  ref::AttnShape s{d.B, d.Sq, d.Sk, d.H, d.Hkv, d.D};
  auto q = detail::to_dense(a.q), k = detail::to_dense(a.k), v = detail::to_dense(a.v);
  auto dout = detail::to_dense(a.dout);
  std::vector<double> dlse;
  if (a.dlse.defined) dlse = detail::to_dense(a.dlse);
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  ref::attention_bwd(s, q.data(), k.data(), v.data(), dout.data(),
                     a.dlse.defined ? dlse.data() : nullptr, a.causal, scale, dq.data(), dk.data(),
                     dv.data());
  detail::from_dense(a.dq, dq);
  detail::from_dense(a.dk, dk);
  detail::from_dense(a.dv, dv);
}

bool cuda_kernels_available(int device) {
  return kernels::available(device);
}

std::string build_info() {
  std::string s = "blackwell_sparsek 0.1.0; kernels: " + kernels::instantiations();
#if defined(BSK_BUILD_CUDA_FLAGS)
  const std::string flags = BSK_BUILD_CUDA_FLAGS;
  s += "; CUDA flags: " + (flags.empty() ? std::string("none") : flags);
#endif
#if defined(BSK_ATTN_PROFILE)
  s += "; attention phase clock (BSK_ATTN_PROFILE) on";
#endif
  return s;
}

}  // namespace bsk
