// SparseK entry points: validation, CPU reference path, CUDA dispatch (selection + attention).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "api/common.h"
#include "bsk/api.h"
#include "bsk/reference.h"
#include "kernels/kernels.h"

#if defined(BSK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace bsk {

using detail::AttnDims;
using detail::Checker;

namespace {

void check_scores(const Checker& c, const TensorView& scores, const TensorView& like, int64_t B,
                  int64_t Sk, int64_t Hkv) {
  c.defined("scores", scores);
  c.shape("scores", scores, {B, Sk, Hkv}, "[B, Sk, Hkv]");
  if (scores.device == Device::kCUDA || like.device == Device::kCUDA)
    c.dtype("scores", scores, DType::kFloat32);
  else if (scores.dtype != DType::kFloat32 && scores.dtype != DType::kFloat64)
    c.fail_dtype("scores", std::string("must be float32, got ") + dtype_name(scores.dtype));
  c.same_device("scores", scores, like);
  if (scores.sizes[2] > 1 && scores.strides[2] != 1 && scores.device == Device::kCUDA)
    c.fail("scores", "must be contiguous in its last dimension");
}

// Selection side outputs: [B, Hkv, Sq] contiguous of a given dtype.
void check_summary(const Checker& c, const char* arg, const TensorView& t, const TensorView& like,
                   int64_t B, int64_t Hkv, int64_t Sq, DType dt) {
  c.defined(arg, t);
  c.shape(arg, t, {B, Hkv, Sq}, "[B, Hkv, Sq]");
  c.dtype(arg, t, dt);
  c.same_device(arg, t, like);
  c.contiguous(arg, t);
}

constexpr std::size_t kAlign = 256;
std::size_t align_up(std::size_t x) {
  return (x + kAlign - 1) / kAlign * kAlign;
}
#if defined(BSK_WITH_CUDA)
// The kernels' scratch layouts assume a kAlign-aligned base (vector loads, 64-bit atomics); a
// caller's workspace may start anywhere, so each size includes kAlign bytes of slack and the
// base is rounded up here.
char* align_ptr(void* p) {
  return reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + kAlign - 1) / kAlign * kAlign);
}
// The selection's scratch as the caller provides it: the kernels' bytes plus that slack.
std::size_t select_scratch_bytes(const kernels::SelectParams& p) {
  const std::size_t bytes = kernels::select_workspace_bytes(p);
  return bytes > 0 ? bytes + kAlign : 0;
}
#endif

// Device scratch of the SparseK forward: the selection summaries, the per-tile unions and the
// selection kernel's own workspace.
struct FwdWorkspace {
  std::size_t off_tau = 0, off_theta_val = 0, off_theta_idx = 0, off_n_active = 0;
  std::size_t off_union = 0, off_union_rows = 0, off_union_u = 0, off_union_cnt = 0;
  std::size_t off_union_old = 0;
  std::size_t off_select = 0, total = 0;
  int tile_q = 128;
  int64_t n_tiles = 0, union_cap = 0;
};

kernels::SelectParams select_params(const TensorView& scores, int64_t B, int64_t Sk, int64_t Hkv,
                                    int64_t Sq, int64_t k_select, int64_t window) {
  kernels::SelectParams p;
  p.scores = static_cast<const float*>(scores.data);
  p.batch = B;
  p.seqlen_k = Sk;
  p.num_heads_kv = Hkv;
  p.seqlen_q = Sq;
  for (int i = 0; i < 3; ++i) p.score_stride[i] = scores.strides[i];
  p.k_select = k_select;
  p.window = window;
  return p;
}

FwdWorkspace plan_workspace(const kernels::SelectParams& sp, int64_t head_dim) {
  FwdWorkspace w;
  w.tile_q = kernels::sparsek_tile_q(head_dim);
  w.n_tiles = (sp.seqlen_q + w.tile_q - 1) / w.tile_q;
  w.union_cap = std::min<int64_t>(sp.k_select + w.tile_q, sp.seqlen_k);
  std::size_t per_q = static_cast<std::size_t>(sp.batch * sp.num_heads_kv * sp.seqlen_q);
  std::size_t pos = 0;
  auto take = [&](std::size_t bytes) {
    std::size_t at = pos;
    pos = align_up(pos + bytes);
    return at;
  };
  w.off_tau = take(per_q * 4);
  w.off_theta_val = take(per_q * 4);
  w.off_theta_idx = take(per_q * 4);
  w.off_n_active = take(per_q * 4);
  std::size_t tiles = static_cast<std::size_t>(sp.batch * sp.num_heads_kv * w.n_tiles);
  w.off_union = take(tiles * static_cast<std::size_t>(w.union_cap) * 4);
  w.off_union_rows = take(tiles * static_cast<std::size_t>(w.union_cap) * 4);
  w.off_union_u = take(tiles * static_cast<std::size_t>(w.union_cap) * 4);
  w.off_union_cnt = take(tiles * 4);
  w.off_union_old = take(tiles * 4);
  kernels::SelectParams probe = sp;
  probe.tile_q = w.tile_q;
  probe.union_cap = w.union_cap;
  w.off_select = take(kernels::select_workspace_bytes(probe));
  w.total = pos + kAlign;  // slack to align the base pointer
  return w;
}

}  // namespace

namespace {
#if defined(BSK_WITH_CUDA)
// Device scratch of `need` bytes for one call: the caller's workspace (refused, naming
// 'workspace', when it is too small) or a stream-ordered allocation owned here and freed when
// this goes out of scope (after the launches, or when one throws).
class Scratch {
 public:
  Scratch(const Checker& c, const char* fn, void* given, std::size_t given_bytes, std::size_t need,
          cudaStream_t stream)
      : stream_(stream) {
    if (need == 0) return;
    if (given != nullptr) {
      if (given_bytes < need)
        c.fail("workspace",
               "needs " + std::to_string(need) + " bytes, got " + std::to_string(given_bytes));
      ptr_ = given;
      return;
    }
    if (cudaMallocAsync(&owned_, need, stream) != cudaSuccess)
      throw CudaError(std::string(fn) + ": cudaMallocAsync of the workspace failed");
    ptr_ = owned_;
  }
  ~Scratch() {
    if (owned_) cudaFreeAsync(owned_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
  void* owned_ = nullptr;
};
#endif

struct SelectDims {
  int64_t B = 0, Sk = 0, Hkv = 0;
};
// The inputs sparsek_select and its workspace query share.
SelectDims check_select_inputs(const Checker& c, const SparseKSelectArgs& a) {
  c.defined("scores", a.scores);
  c.ndim("scores", a.scores, 3);
  SelectDims d{a.scores.sizes[0], a.scores.sizes[1], a.scores.sizes[2]};
  check_scores(c, a.scores, a.scores, d.B, d.Sk, d.Hkv);
  if (a.seqlen_q < 0 || a.seqlen_q > d.Sk)
    c.fail("seqlen_q",
           "must be in [0, Sk=" + std::to_string(d.Sk) + "], got " + std::to_string(a.seqlen_q));
  detail::check_k_window(c, a.k_select, a.window);
  if (a.scores.device == Device::kCUDA && d.Sk >= (int64_t{1} << 31))
    c.fail("scores", "sequence length must be < 2^31");
  return d;
}
}  // namespace

std::size_t sparsek_select_workspace_size(const SparseKSelectArgs& a) {
  Checker c("sparsek_select_workspace_size");
  SelectDims d = check_select_inputs(c, a);
  if (a.scores.device != Device::kCUDA || d.B == 0 || d.Hkv == 0 || a.seqlen_q == 0) return 0;
#if defined(BSK_WITH_CUDA)
  return select_scratch_bytes(
      select_params(a.scores, d.B, d.Sk, d.Hkv, a.seqlen_q, a.k_select, a.window));
#else
  return 0;
#endif
}

void sparsek_select(const SparseKSelectArgs& a) {
  Checker c("sparsek_select");
  const SelectDims d = check_select_inputs(c, a);
  const int64_t B = d.B, Sk = d.Sk, Hkv = d.Hkv;
  check_summary(c, "tau", a.tau, a.scores, B, Hkv, a.seqlen_q, DType::kFloat32);
  check_summary(c, "theta_val", a.theta_val, a.scores, B, Hkv, a.seqlen_q, DType::kFloat32);
  check_summary(c, "theta_idx", a.theta_idx, a.scores, B, Hkv, a.seqlen_q, DType::kInt32);
  check_summary(c, "n_active", a.n_active, a.scores, B, Hkv, a.seqlen_q, DType::kInt32);
  if (B == 0 || Hkv == 0 || a.seqlen_q == 0) return;

  if (a.scores.device == Device::kCPU) {
    auto u = detail::to_dense(a.scores);
    std::vector<ref::SparseKQuery> info(static_cast<size_t>(B * Hkv * a.seqlen_q));
    ref::sparsek_operator(B, Sk, Hkv, a.seqlen_q, u.data(), a.k_select, a.window, info.data());
    std::vector<double> tau(info.size()), tv(info.size()), ti(info.size()), na(info.size());
    for (size_t i = 0; i < info.size(); ++i) {
      tau[i] = info[i].tau;
      tv[i] = info[i].theta_val;
      ti[i] = static_cast<double>(info[i].theta_idx);
      na[i] = static_cast<double>(info[i].n_active);
    }
    detail::from_dense(a.tau, tau);
    detail::from_dense(a.theta_val, tv);
    detail::from_dense(a.theta_idx, ti);
    detail::from_dense(a.n_active, na);
    return;
  }
#if defined(BSK_WITH_CUDA)
  kernels::SelectParams p = select_params(a.scores, B, Sk, Hkv, a.seqlen_q, a.k_select, a.window);
  p.tau = static_cast<float*>(a.tau.data);
  p.theta_val = static_cast<float*>(a.theta_val.data);
  p.theta_idx = static_cast<int32_t*>(a.theta_idx.data);
  p.n_active = static_cast<int32_t*>(a.n_active.data);
  p.stream = a.stream;
  const std::size_t need = select_scratch_bytes(p);
  const Scratch scratch(c, "sparsek_select", a.workspace, a.workspace_bytes, need,
                        static_cast<cudaStream_t>(a.stream));
  p.workspace = need > 0 ? align_ptr(scratch.get()) : nullptr;
  kernels::sparsek_select(p);
#else
  kernels::sparsek_select(kernels::SelectParams{});
#endif
}

namespace {
AttnDims check_fwd(const Checker& c, const SparseKFwdArgs& a) {
  AttnDims d = detail::check_qkv(c, a.q, a.k, a.v, /*sparsek=*/true);
  check_scores(c, a.scores, a.q, d.B, d.Sk, d.Hkv);
  detail::check_k_window(c, a.k_select, a.window);
  c.scale(a.scale, d.D);
  return d;
}
}  // namespace

std::size_t sparsek_attention_fwd_workspace_size(const SparseKFwdArgs& a) {
  Checker c("sparsek_attention_fwd_workspace_size");
  AttnDims d = check_fwd(c, a);
  if (a.q.device != Device::kCUDA) return 0;
  auto sp = select_params(a.scores, d.B, d.Sk, d.Hkv, d.Sq, a.k_select, a.window);
  return plan_workspace(sp, d.D).total;
}

void sparsek_attention_fwd(const SparseKFwdArgs& a) {
  Checker c("sparsek_attention_fwd");
  AttnDims d = check_fwd(c, a);
  c.defined("out", a.out);
  detail::check_like(c, "out", a.out, a.q);
  detail::check_lse(c, "lse", a.lse, a.q, d);
  float scale = c.scale(a.scale, d.D);
  if (d.B == 0 || d.Sq == 0 || d.H == 0) return;

  if (a.q.device == Device::kCPU) {
    ref::AttnShape s{d.B, d.Sq, d.Sk, d.H, d.Hkv, d.D};
    auto q = detail::to_dense(a.q), k = detail::to_dense(a.k), v = detail::to_dense(a.v);
    auto u = detail::to_dense(a.scores);
    std::vector<double> out(q.size()), lse(static_cast<size_t>(d.B * d.H * d.Sq));
    ref::sparsek_attention_fwd(s, q.data(), k.data(), v.data(), u.data(), a.k_select, a.window,
                               scale, out.data(), lse.data());
    detail::from_dense(a.out, out);
    if (a.lse.defined) detail::from_dense(a.lse, lse);
    return;
  }
#if defined(BSK_WITH_CUDA)
  auto sp = select_params(a.scores, d.B, d.Sk, d.Hkv, d.Sq, a.k_select, a.window);
  FwdWorkspace w = plan_workspace(sp, d.D);
  const Scratch scratch(c, "sparsek_attention_fwd", a.workspace, a.workspace_bytes, w.total,
                        static_cast<cudaStream_t>(a.stream));
  char* base = align_ptr(scratch.get());
  sp.tau = reinterpret_cast<float*>(base + w.off_tau);
  sp.theta_val = reinterpret_cast<float*>(base + w.off_theta_val);
  sp.theta_idx = reinterpret_cast<int32_t*>(base + w.off_theta_idx);
  sp.n_active = reinterpret_cast<int32_t*>(base + w.off_n_active);
  sp.union_idx = reinterpret_cast<int32_t*>(base + w.off_union);
  sp.union_rows = reinterpret_cast<int32_t*>(base + w.off_union_rows);
  sp.union_u = reinterpret_cast<float*>(base + w.off_union_u);
  sp.union_cnt = reinterpret_cast<int32_t*>(base + w.off_union_cnt);
  sp.union_old = reinterpret_cast<int32_t*>(base + w.off_union_old);
  sp.tile_q = w.tile_q;
  sp.union_cap = w.union_cap;
  sp.workspace = base + w.off_select;
  sp.stream = a.stream;

  kernels::SparseKFwdParams p;
  p.attn = detail::attn_params(a.q, a.k, a.v, a.out, a.lse, d);
  p.attn.causal = true;
  p.attn.scale = scale;
  p.attn.stream = a.stream;
  p.k_select = a.k_select;
  p.window = a.window;
  p.tau = sp.tau;
  p.union_idx = sp.union_idx;
  p.union_rows = sp.union_rows;
  p.union_u = sp.union_u;
  p.union_cnt = sp.union_cnt;
  p.union_old = sp.union_old;
  p.tile_q = w.tile_q;
  p.union_cap = w.union_cap;
  kernels::sparsek_select(sp);
  kernels::sparsek_attention_fwd(p);
#else
  kernels::sparsek_attention_fwd(kernels::SparseKFwdParams{});
#endif
}

void sparsek_attention_bwd(const SparseKBwdArgs& a) {
  Checker c("sparsek_attention_bwd");
  AttnDims d = detail::check_qkv(c, a.q, a.k, a.v, /*sparsek=*/true);
  check_scores(c, a.scores, a.q, d.B, d.Sk, d.Hkv);
  detail::check_k_window(c, a.k_select, a.window);
  detail::check_like(c, "out", a.out, a.q);
  detail::check_like(c, "dout", a.dout, a.q);
  detail::check_like(c, "dq", a.dq, a.q);
  detail::check_like(c, "dk", a.dk, a.k);
  detail::check_like(c, "dv", a.dv, a.v);
  c.defined("lse", a.lse);
  detail::check_lse(c, "lse", a.lse, a.q, d);
  detail::check_lse(c, "dlse", a.dlse, a.q, d);
  c.defined("dscores", a.dscores);
  c.shape("dscores", a.dscores, {d.B, d.Sk, d.Hkv}, "[B, Sk, Hkv]");
  if (a.dscores.dtype != DType::kFloat32 && a.dscores.dtype != DType::kFloat64)
    c.fail_dtype("dscores", std::string("must be float32, got ") + dtype_name(a.dscores.dtype));
  c.same_device("dscores", a.dscores, a.q);
  float scale = c.scale(a.scale, d.D);
  if (a.q.device != Device::kCPU)
    throw NotImplemented(
        "sparsek_attention_bwd: the CUDA backward is not implemented in this build; use the "
        "PyTorch implementation (blackwell_sparsek.reference.sparsek_attention_bwd_ref)");
  ref::AttnShape s{d.B, d.Sq, d.Sk, d.H, d.Hkv, d.D};
  auto q = detail::to_dense(a.q), k = detail::to_dense(a.k), v = detail::to_dense(a.v);
  auto u = detail::to_dense(a.scores), dout = detail::to_dense(a.dout);
  std::vector<double> dlse;
  if (a.dlse.defined) dlse = detail::to_dense(a.dlse);
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size()), du(u.size());
  ref::sparsek_attention_bwd(s, q.data(), k.data(), v.data(), u.data(), a.k_select, a.window, scale,
                             dout.data(), a.dlse.defined ? dlse.data() : nullptr, dq.data(),
                             dk.data(), dv.data(), du.data());
  detail::from_dense(a.dq, dq);
  detail::from_dense(a.dk, dk);
  detail::from_dense(a.dv, dv);
  detail::from_dense(a.dscores, du);
}

}  // namespace bsk
