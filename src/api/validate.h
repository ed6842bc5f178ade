// Argument checks shared by the API entry points. Every check throws before anything is written.
#pragma once

#include <cmath>
#include <string>

#include "bsk/types.h"

namespace bsk::detail {

inline std::string shape_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.sizes[i]);
  return s + "]";
}

inline std::string shape_str(std::initializer_list<int64_t> sizes) {
  std::string s = "[";
  int i = 0;
  for (int64_t v : sizes) s += (i++ ? ", " : "") + std::to_string(v);
  return s + "]";
}

class Checker {
 public:
  explicit Checker(const char* func) : func_(func) {}

  [[noreturn]] void fail(const std::string& arg, const std::string& what) const {
    throw InvalidArgument(func_, arg, what);
  }
  [[noreturn]] void fail_dtype(const std::string& arg, const std::string& what) const {
    throw DTypeError(func_, arg, what);
  }

  void defined(const char* arg, const TensorView& t) const {
    if (!t.defined) fail(arg, "is required but was not given");
    if (t.data == nullptr && t.numel() > 0) fail(arg, "has a null data pointer");
  }

  void ndim(const char* arg, const TensorView& t, int n) const {
    if (t.ndim != n)
      fail(arg, "must have " + std::to_string(n) + " dimensions, got " + std::to_string(t.ndim) +
                    " (shape " + shape_str(t) + ")");
  }

  void shape(const char* arg, const TensorView& t, std::initializer_list<int64_t> want,
             const char* names) const {
    ndim(arg, t, static_cast<int>(want.size()));
    int i = 0;
    for (int64_t w : want) {
      if (t.sizes[i] != w)
        fail(arg, std::string("must have shape ") + names + " = " + shape_str(want) + ", got " +
                      shape_str(t));
      ++i;
    }
  }

  void dtype(const char* arg, const TensorView& t, DType want) const {
    if (t.dtype != want)
      fail_dtype(
          arg, std::string("must have dtype ") + dtype_name(want) + ", got " + dtype_name(t.dtype));
  }

  // Attention inputs: fp16/bf16 on CUDA; on the CPU (exact reference) any float dtype.
  void float_input(const char* arg, const TensorView& t) const {
    bool half = t.dtype == DType::kFloat16 || t.dtype == DType::kBFloat16;
    bool wide = t.dtype == DType::kFloat32 || t.dtype == DType::kFloat64;
    if (t.device == Device::kCUDA && !half)
      fail_dtype(arg,
                 std::string("must be float16 or bfloat16 on CUDA, got ") + dtype_name(t.dtype));
    if (!half && !wide)
      fail_dtype(arg, std::string("must be a floating-point tensor, got ") + dtype_name(t.dtype));
  }

  void same_device(const char* arg, const TensorView& t, const TensorView& ref) const {
    if (t.device != ref.device || t.device_index != ref.device_index)
      fail(arg, std::string("must be on the same device as q (") + device_name(ref.device) + ":" +
                    std::to_string(ref.device_index) + "), got " + device_name(t.device) + ":" +
                    std::to_string(t.device_index));
  }

  // Last dimension contiguous; on CUDA the base pointer and every other stride must allow
  // 16-byte vector access (what TMA and cp.async need).
  void strided_rows(const char* arg, const TensorView& t) const {
    if (t.sizes[t.ndim - 1] > 1 && t.strides[t.ndim - 1] != 1)
      fail(arg, "must be contiguous in its last dimension (stride " +
                    std::to_string(t.strides[t.ndim - 1]) + ")");
    for (int i = 0; i < t.ndim; ++i)
      if (t.strides[i] < 0) fail(arg, "must not have negative strides");
    if (t.device != Device::kCUDA) return;
    int64_t elems16 = 16 / static_cast<int64_t>(dtype_size(t.dtype));
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0)
      fail(arg, "must be 16-byte aligned on CUDA (data pointer is not)");
    for (int i = 0; i + 1 < t.ndim; ++i)
      if (t.sizes[i] > 1 && t.strides[i] % elems16 != 0)
        fail(arg, "strides must be multiples of " + std::to_string(elems16) +
                      " elements (16 bytes) on CUDA, got stride " + std::to_string(t.strides[i]) +
                      " in dimension " + std::to_string(i));
  }

  // A [B,H,Sq] float32 contiguous side output (lse, selection summaries).
  void contiguous(const char* arg, const TensorView& t) const {
    if (t.numel() == 0) return;
    int64_t stride = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (t.sizes[i] > 1 && t.strides[i] != stride) fail(arg, "must be contiguous");
      stride *= t.sizes[i];
    }
  }

  float scale(float s, int64_t head_dim) const {
    if (std::isnan(s)) return 1.0f / std::sqrt(static_cast<float>(head_dim));
    if (!std::isfinite(s) || s <= 0.f)
      fail("scale", "must be finite and positive, got " + std::to_string(s));
    return s;
  }

  const char* func() const { return func_; }

 private:
  const char* func_;
};

}  // namespace bsk::detail
