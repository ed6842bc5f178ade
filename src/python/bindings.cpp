// nanobind extension blackwell_sparsek._C: tensors cross as DLPack (any framework), outputs are
// preallocated by the caller, the CUDA stream is passed explicitly as an integer handle.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bsk/api.h"
#include "bsk/reference.h"

namespace nb = nanobind;
using Array = nb::ndarray<>;

namespace {

bsk::DType to_dtype(const nb::dlpack::dtype& t, const char* arg) {
  using C = nb::dlpack::dtype_code;
  auto code = static_cast<C>(t.code);
  if (t.lanes == 1) {
    if (code == C::Float && t.bits == 16) return bsk::DType::kFloat16;
    if (code == C::Float && t.bits == 32) return bsk::DType::kFloat32;
    if (code == C::Float && t.bits == 64) return bsk::DType::kFloat64;
    if (code == C::Bfloat && t.bits == 16) return bsk::DType::kBFloat16;
    if (code == C::Int && t.bits == 32) return bsk::DType::kInt32;
    if (code == C::Int && t.bits == 64) return bsk::DType::kInt64;
    if (code == C::UInt && t.bits == 8) return bsk::DType::kUInt8;
  }
  throw bsk::DTypeError("binding", arg,
                        "unsupported dtype (code " + std::to_string(t.code) + ", " +
                            std::to_string(t.bits) + " bits)");
}

bsk::TensorView view(const Array& a, const char* arg) {
  bsk::TensorView v;
  if (!a.is_valid()) return v;  // None: absent optional tensor
  if (a.ndim() > static_cast<size_t>(bsk::TensorView::kMaxDims))
    throw bsk::InvalidArgument("binding", arg, "has more than 4 dimensions");
  v.data = a.data();
  v.dtype = to_dtype(a.dtype(), arg);
  v.device = a.device_type() == nb::device::cuda::value ? bsk::Device::kCUDA : bsk::Device::kCPU;
  v.device_index = a.device_id();
  v.ndim = static_cast<int>(a.ndim());
  for (int i = 0; i < v.ndim; ++i) {
    v.sizes[i] = static_cast<int64_t>(a.shape(i));
    v.strides[i] = static_cast<int64_t>(a.stride(i));
  }
  v.defined = true;
  return v;
}

void* stream_ptr(uintptr_t s) {
  return reinterpret_cast<void*>(s);
}

float scale_or_default(const nb::object& s) {
  return s.is_none() ? bsk::kDefaultScale : nb::cast<float>(s);
}

// The inputs every SparseK attention call has (forward, its workspace query, backward).
template <class Args>
void set_sparsek_inputs(Args& a, const Array& q, const Array& k, const Array& v,
                        const Array& scores, int64_t k_select, int64_t window) {
  a.q = view(q, "q");
  a.k = view(k, "k");
  a.v = view(v, "v");
  a.scores = view(scores, "scores");
  a.k_select = k_select;
  a.window = window;
}

bsk::SparseKFwdArgs sparsek_fwd_inputs(const Array& q, const Array& k, const Array& v,
                                       const Array& scores, int64_t k_select, int64_t window) {
  bsk::SparseKFwdArgs a;
  set_sparsek_inputs(a, q, k, v, scores, k_select, window);
  return a;
}

// The inputs sparsek_select and its workspace query share.
bsk::SparseKSelectArgs sparsek_select_inputs(const Array& scores, int64_t seqlen_q,
                                             int64_t k_select, int64_t window) {
  bsk::SparseKSelectArgs a;
  a.scores = view(scores, "scores");
  a.seqlen_q = seqlen_q;
  a.k_select = k_select;
  a.window = window;
  return a;
}

// An optional caller-owned workspace (a CUDA tensor, e.g. from PyTorch's caching allocator)
// instead of a stream-ordered allocation per call; `fn` names the call in the error.
void set_workspace(const char* fn, const Array& workspace, void*& ptr, std::size_t& bytes) {
  if (!workspace.is_valid()) return;
  if (workspace.device_type() != nb::device::cuda::value)
    throw bsk::InvalidArgument(fn, "workspace", "must be a CUDA tensor");
  ptr = workspace.data();
  bytes = workspace.nbytes();
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "BlackwellSparseK native core (sm_90a kernels and exact CPU references)";

  // DTypeError derives from InvalidArgument: translate the more specific one first.
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const bsk::DTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const bsk::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const bsk::NotImplemented& e) {
      PyErr_SetString(PyExc_NotImplementedError, e.what());
    } catch (const bsk::CudaError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  m.def(
      "attention_fwd",
      [](Array q, Array k, Array v, Array out, Array lse, bool causal, nb::object scale,
         uintptr_t stream) {
        bsk::AttentionFwdArgs a;
        a.q = view(q, "q");
        a.k = view(k, "k");
        a.v = view(v, "v");
        a.out = view(out, "out");
        a.lse = view(lse, "lse");
        a.causal = causal;
        a.scale = scale_or_default(scale);
        a.stream = stream_ptr(stream);
        nb::gil_scoped_release nogil;
        bsk::attention_fwd(a);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("lse").none(),
      nb::arg("causal"), nb::arg("scale").none(), nb::arg("stream") = 0);

  m.def(
      "attention_bwd",
      [](Array q, Array k, Array v, Array out, Array dout, Array lse, Array dlse, Array dq,
         Array dk, Array dv, bool causal, nb::object scale, uintptr_t stream) {
        bsk::AttentionBwdArgs a;
        a.q = view(q, "q");
        a.k = view(k, "k");
        a.v = view(v, "v");
        a.out = view(out, "out");
        a.dout = view(dout, "dout");
        a.lse = view(lse, "lse");
        a.dlse = view(dlse, "dlse");
        a.dq = view(dq, "dq");
        a.dk = view(dk, "dk");
        a.dv = view(dv, "dv");
        a.causal = causal;
        a.scale = scale_or_default(scale);
        a.stream = stream_ptr(stream);
        nb::gil_scoped_release nogil;
        bsk::attention_bwd(a);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("dout"), nb::arg("lse"),
      nb::arg("dlse").none(), nb::arg("dq"), nb::arg("dk"), nb::arg("dv"), nb::arg("causal"),
      nb::arg("scale").none(), nb::arg("stream") = 0);

  m.def(
      "sparsek_select_workspace_size",
      [](Array scores, int64_t seqlen_q, int64_t k_select, int64_t window) {
        return bsk::sparsek_select_workspace_size(
            sparsek_select_inputs(scores, seqlen_q, k_select, window));
      },
      nb::arg("scores"), nb::arg("seqlen_q"), nb::arg("k_select"), nb::arg("window"),
      "Bytes of device scratch sparsek_select needs (0 for CPU tensors and for sequences of "
      "at most 2048 keys).");

  m.def(
      "sparsek_select",
      [](Array scores, int64_t seqlen_q, int64_t k_select, int64_t window, Array tau,
         Array theta_val, Array theta_idx, Array n_active, uintptr_t stream, Array workspace) {
        bsk::SparseKSelectArgs a = sparsek_select_inputs(scores, seqlen_q, k_select, window);
        a.tau = view(tau, "tau");
        a.theta_val = view(theta_val, "theta_val");
        a.theta_idx = view(theta_idx, "theta_idx");
        a.n_active = view(n_active, "n_active");
        a.stream = stream_ptr(stream);
        set_workspace("sparsek_select", workspace, a.workspace, a.workspace_bytes);
        nb::gil_scoped_release nogil;
        bsk::sparsek_select(a);
      },
      nb::arg("scores"), nb::arg("seqlen_q"), nb::arg("k_select"), nb::arg("window"),
      nb::arg("tau"), nb::arg("theta_val"), nb::arg("theta_idx"), nb::arg("n_active"),
      nb::arg("stream") = 0, nb::arg("workspace").none() = nb::none());

  m.def(
      "sparsek_attention_fwd",
      [](Array q, Array k, Array v, Array scores, Array out, Array lse, int64_t k_select,
         int64_t window, nb::object scale, uintptr_t stream, Array workspace) {
        bsk::SparseKFwdArgs a = sparsek_fwd_inputs(q, k, v, scores, k_select, window);
        a.out = view(out, "out");
        a.lse = view(lse, "lse");
        a.scale = scale_or_default(scale);
        a.stream = stream_ptr(stream);
        set_workspace("sparsek_attention_fwd", workspace, a.workspace, a.workspace_bytes);
        nb::gil_scoped_release nogil;
        bsk::sparsek_attention_fwd(a);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scores"), nb::arg("out"),
      nb::arg("lse").none(), nb::arg("k_select"), nb::arg("window"), nb::arg("scale").none(),
      nb::arg("stream") = 0, nb::arg("workspace").none() = nb::none());

  m.def(
      "sparsek_attention_fwd_workspace_size",
      [](Array q, Array k, Array v, Array scores, int64_t k_select, int64_t window) {
        return bsk::sparsek_attention_fwd_workspace_size(
            sparsek_fwd_inputs(q, k, v, scores, k_select, window));
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scores"), nb::arg("k_select"),
      nb::arg("window"),
      "Bytes of device scratch sparsek_attention_fwd needs (0 for CPU tensors).");

  m.def(
      "sparsek_attention_bwd",
      [](Array q, Array k, Array v, Array scores, Array out, Array dout, Array lse, Array dlse,
         Array dq, Array dk, Array dv, Array dscores, int64_t k_select, int64_t window,
         nb::object scale, uintptr_t stream) {
        bsk::SparseKBwdArgs a;
        set_sparsek_inputs(a, q, k, v, scores, k_select, window);
        a.out = view(out, "out");
        a.dout = view(dout, "dout");
        a.lse = view(lse, "lse");
        a.dlse = view(dlse, "dlse");
        a.dq = view(dq, "dq");
        a.dk = view(dk, "dk");
        a.dv = view(dv, "dv");
        a.dscores = view(dscores, "dscores");
        a.scale = scale_or_default(scale);
        a.stream = stream_ptr(stream);
        nb::gil_scoped_release nogil;
        bsk::sparsek_attention_bwd(a);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scores"), nb::arg("out"), nb::arg("dout"),
      nb::arg("lse"), nb::arg("dlse").none(), nb::arg("dq"), nb::arg("dk"), nb::arg("dv"),
      nb::arg("dscores"), nb::arg("k_select"), nb::arg("window"), nb::arg("scale").none(),
      nb::arg("stream") = 0);

  // Explicit selection from the C++ reference, for tests: CPU float64 scores [B, Sk, Hkv],
  // idx int64 [B, Sq, Hkv, k], gate float64 [B, Sq, Hkv, k] (contiguous).
  m.def(
      "sparsek_selection_ref",
      [](Array scores, int64_t seqlen_q, int64_t k_select, int64_t window, Array idx, Array gate) {
        const char* fn = "sparsek_selection_ref";
        auto s = view(scores, "scores"), i = view(idx, "idx"), g = view(gate, "gate");
        auto need = [&](const bsk::TensorView& t, const char* arg, bsk::DType dt, int nd) {
          if (!t.defined || t.device != bsk::Device::kCPU || t.dtype != dt || t.ndim != nd)
            throw bsk::InvalidArgument(fn, arg,
                                       std::string("must be a CPU ") + bsk::dtype_name(dt) +
                                           " tensor with " + std::to_string(nd) + " dims");
          int64_t stride = 1;
          if (t.numel() == 0) return;
          for (int d = nd - 1; d >= 0; --d) {
            if (t.sizes[d] > 1 && t.strides[d] != stride)
              throw bsk::InvalidArgument(fn, arg, "must be contiguous");
            stride *= t.sizes[d];
          }
        };
        need(s, "scores", bsk::DType::kFloat64, 3);
        need(i, "idx", bsk::DType::kInt64, 4);
        need(g, "gate", bsk::DType::kFloat64, 4);
        int64_t B = s.sizes[0], Sk = s.sizes[1], Hkv = s.sizes[2];
        if (seqlen_q < 0 || seqlen_q > Sk)
          throw bsk::InvalidArgument(fn, "seqlen_q", "must be in [0, Sk]");
        if (k_select < 0) throw bsk::InvalidArgument(fn, "k_select", "must be >= 0");
        if (window < 0) throw bsk::InvalidArgument(fn, "window", "must be >= 0");
        int64_t want[4] = {B, seqlen_q, Hkv, k_select};
        for (int d = 0; d < 4; ++d) {
          if (i.sizes[d] != want[d])
            throw bsk::InvalidArgument(fn, "idx", "must have shape [B, Sq, Hkv, k_select]");
          if (g.sizes[d] != want[d])
            throw bsk::InvalidArgument(fn, "gate", "must have shape [B, Sq, Hkv, k_select]");
        }
        nb::gil_scoped_release nogil;
        bsk::ref::sparsek_selection(B, Sk, Hkv, seqlen_q, s.ptr<double>(), k_select, window,
                                    i.ptr<int64_t>(), g.ptr<double>());
      },
      nb::arg("scores"), nb::arg("seqlen_q"), nb::arg("k_select"), nb::arg("window"),
      nb::arg("idx"), nb::arg("gate"));

  m.def("cuda_kernels_available", &bsk::cuda_kernels_available, nb::arg("device") = 0);
  m.def("build_info", &bsk::build_info);
}
