// Every invalid-argument path of the C++ API: the right exception, naming the argument, and
// nothing written to the outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "bsk/api.h"

namespace {

using bsk::Device;
using bsk::DType;
using bsk::TensorView;

struct Buf {
  std::vector<double> data;
  TensorView view;
  Buf(std::initializer_list<int64_t> shape, DType dt = DType::kFloat64, double fill = 0.5) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    data.assign(static_cast<size_t>(n) + 1, fill);
    view = bsk::make_view(data.data(), dt, Device::kCPU, shape);
    if (dt == DType::kFloat32) {
      auto* f = reinterpret_cast<float*>(data.data());
      for (int64_t i = 0; i < n; ++i) f[i] = static_cast<float>(fill);
    } else if (dt == DType::kInt32) {
      auto* f = reinterpret_cast<int32_t*>(data.data());
      for (int64_t i = 0; i < n; ++i) f[i] = 7;
    }
  }
};

// Checks that `f` throws E and that the message names `arg`.
template <class E, class F>
void expect_error(F&& f, const std::string& arg) {
  try {
    f();
    FAIL() << "no exception; expected one naming '" << arg << "'";
  } catch (const E& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("'" + arg + "'"), std::string::npos) << msg;
  } catch (const std::exception& e) {
    FAIL() << "wrong exception type: " << e.what();
  }
}

struct DenseSetup {
  Buf q{{2, 5, 4, 8}}, k{{2, 7, 2, 8}}, v{{2, 7, 2, 8}}, out{{2, 5, 4, 8}, DType::kFloat64, 123.0};
  Buf lse{{2, 4, 5}, DType::kFloat32, 123.0};
  bsk::AttentionFwdArgs args() {
    bsk::AttentionFwdArgs a;
    a.q = q.view;
    a.k = k.view;
    a.v = v.view;
    a.out = out.view;
    a.lse = lse.view;
    return a;
  }
  bool untouched() const {
    for (size_t i = 0; i + 1 < out.data.size(); ++i)
      if (out.data[i] != 123.0) return false;
    const float* l = reinterpret_cast<const float*>(lse.data.data());
    for (int i = 0; i < 2 * 4 * 5; ++i)
      if (l[i] != 123.0f) return false;
    return true;
  }
};

TEST(ApiValidation, DenseValidRunsOnCpu) {
  DenseSetup s;
  bsk::attention_fwd(s.args());
  EXPECT_FALSE(s.untouched());
  EXPECT_NEAR(s.out.data[0], 0.5, 1e-12);  // constant v: output equals it
}

TEST(ApiValidation, DenseShapeErrors) {
  {
    DenseSetup s;
    auto a = s.args();
    a.q.ndim = 3;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "q");
    EXPECT_TRUE(s.untouched());
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.k.sizes[0] = 3;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "k");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.k.sizes[3] = 4;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "k");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.v.sizes[1] = 6;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "v");
  }
  {
    DenseSetup s;  // H % Hkv != 0
    Buf k3({2, 7, 3, 8}), v3({2, 7, 3, 8});
    auto a = s.args();
    a.k = k3.view;
    a.v = v3.view;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "k");
    EXPECT_TRUE(s.untouched());
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.out.sizes[1] = 4;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "out");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.lse.sizes[2] = 4;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "lse");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.q.defined = false;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "q");
  }
}

TEST(ApiValidation, DenseDtypeStrideDeviceScaleErrors) {
  {
    DenseSetup s;
    auto a = s.args();
    a.k.dtype = DType::kFloat32;
    expect_error<bsk::DTypeError>([&] { bsk::attention_fwd(a); }, "k");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.q.dtype = DType::kInt32;
    expect_error<bsk::DTypeError>([&] { bsk::attention_fwd(a); }, "q");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.lse.dtype = DType::kFloat64;
    expect_error<bsk::DTypeError>([&] { bsk::attention_fwd(a); }, "lse");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.v.strides[3] = 2;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "v");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.out.device = Device::kCUDA;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "out");
  }
  {
    DenseSetup s;
    auto a = s.args();
    a.k.device_index = 1;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "k");
  }
  for (float bad : {0.f, -1.f, INFINITY}) {
    DenseSetup s;
    auto a = s.args();
    a.scale = bad;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "scale");
    EXPECT_TRUE(s.untouched());
  }
  {
    DenseSetup s;  // CUDA tensors must be fp16/bf16, checked before any device access
    auto a = s.args();
    for (TensorView* t : {&a.q, &a.k, &a.v, &a.out, &a.lse}) t->device = Device::kCUDA;
    expect_error<bsk::DTypeError>([&] { bsk::attention_fwd(a); }, "q");
  }
  {
    DenseSetup s;  // CUDA head dim must be 64/128 (dtype fp16 to pass the dtype check)
    auto a = s.args();
    for (TensorView* t : {&a.q, &a.k, &a.v, &a.out}) {
      t->device = Device::kCUDA;
      t->dtype = DType::kFloat16;
    }
    a.lse.device = Device::kCUDA;
    expect_error<bsk::InvalidArgument>([&] { bsk::attention_fwd(a); }, "q");
  }
}

struct SparseSetup {
  Buf q{{1, 6, 2, 4}}, k{{1, 9, 1, 4}}, v{{1, 9, 1, 4}}, u{{1, 9, 1}, DType::kFloat32};
  Buf out{{1, 6, 2, 4}, DType::kFloat64, 123.0};
  bsk::SparseKFwdArgs args() {
    bsk::SparseKFwdArgs a;
    a.q = q.view;
    a.k = k.view;
    a.v = v.view;
    a.scores = u.view;
    a.out = out.view;
    a.k_select = 2;
    a.window = 2;
    return a;
  }
  bool untouched() const {
    for (size_t i = 0; i + 1 < out.data.size(); ++i)
      if (out.data[i] != 123.0) return false;
    return true;
  }
};

TEST(ApiValidation, SparseKErrors) {
  {
    SparseSetup s;
    bsk::sparsek_attention_fwd(s.args());
    EXPECT_FALSE(s.untouched());
  }
  {
    SparseSetup s;
    auto a = s.args();
    a.k_select = -1;
    expect_error<bsk::InvalidArgument>([&] { bsk::sparsek_attention_fwd(a); }, "k_select");
    EXPECT_TRUE(s.untouched());
  }
  {
    SparseSetup s;
    auto a = s.args();
    a.window = -3;
    expect_error<bsk::InvalidArgument>([&] { bsk::sparsek_attention_fwd(a); }, "window");
  }
  {
    SparseSetup s;
    auto a = s.args();
    a.window = 0;
    a.k_select = 0;
    expect_error<bsk::InvalidArgument>([&] { bsk::sparsek_attention_fwd(a); }, "k_select");
  }
  {
    SparseSetup s;
    auto a = s.args();
    a.scores.sizes[1] = 8;
    expect_error<bsk::InvalidArgument>([&] { bsk::sparsek_attention_fwd(a); }, "scores");
  }
  {
    SparseSetup s;
    auto a = s.args();
    a.scores.dtype = DType::kInt32;
    expect_error<bsk::DTypeError>([&] { bsk::sparsek_attention_fwd(a); }, "scores");
  }
  {
    SparseSetup s;  // Sq > Sk
    Buf q({1, 10, 2, 4}), out({1, 10, 2, 4});
    auto a = s.args();
    a.q = q.view;
    a.out = out.view;
    expect_error<bsk::InvalidArgument>([&] { bsk::sparsek_attention_fwd(a); }, "q");
  }
  {
    SparseSetup s;
    auto a = s.args();
    a.out.dtype = DType::kFloat32;
    expect_error<bsk::DTypeError>([&] { bsk::sparsek_attention_fwd(a); }, "out");
  }
}

TEST(ApiValidation, SelectErrors) {
  Buf u({2, 9, 3}, DType::kFloat32);
  Buf tau({2, 3, 5}, DType::kFloat32, 123.0), tv({2, 3, 5}, DType::kFloat32, 123.0);
  Buf ti({2, 3, 5}, DType::kInt32), na({2, 3, 5}, DType::kInt32);
  bsk::SparseKSelectArgs a;
  a.scores = u.view;
  a.seqlen_q = 5;
  a.k_select = 2;
  a.window = 1;
  a.tau = tau.view;
  a.theta_val = tv.view;
  a.theta_idx = ti.view;
  a.n_active = na.view;
  auto b = a;
  b.seqlen_q = 10;
  expect_error<bsk::InvalidArgument>([&] { bsk::sparsek_select(b); }, "seqlen_q");
  b = a;
  b.theta_idx.dtype = DType::kInt64;
  expect_error<bsk::DTypeError>([&] { bsk::sparsek_select(b); }, "theta_idx");
  b = a;
  b.n_active.sizes[2] = 4;
  expect_error<bsk::InvalidArgument>([&] { bsk::sparsek_select(b); }, "n_active");
  b = a;
  b.tau.strides[2] = 2;
  expect_error<bsk::InvalidArgument>([&] { bsk::sparsek_select(b); }, "tau");
  const float* t = reinterpret_cast<const float*>(tau.data.data());
  EXPECT_EQ(t[0], 123.0f);  // nothing written on error
  bsk::sparsek_select(a);
  EXPECT_NE(t[0], 123.0f);
}

TEST(ApiValidation, BackwardOnCudaSaysNotImplemented) {
  DenseSetup s;
  bsk::AttentionBwdArgs a;
  Buf dq({2, 5, 4, 8}), dk({2, 7, 2, 8}), dv({2, 7, 2, 8}), dout({2, 5, 4, 8});
  a.q = s.q.view;
  a.k = s.k.view;
  a.v = s.v.view;
  a.out = s.out.view;
  a.dout = dout.view;
  a.lse = s.lse.view;
  a.dq = dq.view;
  a.dk = dk.view;
  a.dv = dv.view;
  for (TensorView* t : {&a.q, &a.k, &a.v, &a.out, &a.dout, &a.lse, &a.dq, &a.dk, &a.dv}) {
    t->device = Device::kCUDA;
    if (t->dtype == DType::kFloat64) t->dtype = DType::kFloat16;
  }
  for (TensorView* t : {&a.q, &a.k, &a.v, &a.out, &a.dout, &a.dq, &a.dk, &a.dv}) t->sizes[3] = 8;
  // Head dim 8 is rejected first on CUDA; with 64 it reaches the NotImplemented path.
  EXPECT_THROW(bsk::attention_bwd(a), bsk::InvalidArgument);
}

}  // namespace
