// CPU-side conversion between strided TensorViews of any float dtype and the dense double
// arrays the references use.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bsk/types.h"

namespace bsk::detail {

inline double half_to_double(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  double v;
  if (exp == 0)
    v = std::ldexp(static_cast<double>(man), -24);
  else if (exp == 31)
    v = man ? NAN : INFINITY;
  else
    v = std::ldexp(static_cast<double>(man | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

// Round-to-nearest-even float -> half.
inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t absx = x & 0x7fffffff;
  if (absx > 0x7f800000) return static_cast<uint16_t>(sign | 0x7e00);   // NaN
  if (absx >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // overflow -> inf
  if (absx < 0x38800000) {  // subnormal half (or zero): scale to an integer count of 2^-24
    float a;
    std::memcpy(&a, &absx, 4);
    float q = std::nearbyint(a * 16777216.0f);  // exact in float, ties to even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(q));
  }
  uint32_t mant = absx & 0x7fffff;
  uint32_t exp = (absx >> 23) - 112;
  uint32_t h = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline double bf16_to_double(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  uint32_t lsb = (x >> 16) & 1;
  x += 0x7fff + lsb;
  return static_cast<uint16_t>(x >> 16);
}

inline double load_scalar(const TensorView& t, int64_t off) {
  const char* base = static_cast<const char*>(t.data);
  switch (t.dtype) {
    case DType::kFloat16:
      return half_to_double(reinterpret_cast<const uint16_t*>(base)[off]);
    case DType::kBFloat16:
      return bf16_to_double(reinterpret_cast<const uint16_t*>(base)[off]);
    case DType::kFloat32:
      return reinterpret_cast<const float*>(base)[off];
    case DType::kFloat64:
      return reinterpret_cast<const double*>(base)[off];
    case DType::kInt32:
      return reinterpret_cast<const int32_t*>(base)[off];
    case DType::kInt64:
      return static_cast<double>(reinterpret_cast<const int64_t*>(base)[off]);
    case DType::kUInt8:
      return reinterpret_cast<const uint8_t*>(base)[off];
  }
  return 0;
}

inline void store_scalar(const TensorView& t, int64_t off, double v) {
  char* base = static_cast<char*>(t.data);
  switch (t.dtype) {
    case DType::kFloat16:
      reinterpret_cast<uint16_t*>(base)[off] = float_to_half(static_cast<float>(v));
      break;
    case DType::kBFloat16:
      reinterpret_cast<uint16_t*>(base)[off] = float_to_bf16(static_cast<float>(v));
      break;
    case DType::kFloat32:
      reinterpret_cast<float*>(base)[off] = static_cast<float>(v);
      break;
    case DType::kFloat64:
      reinterpret_cast<double*>(base)[off] = v;
      break;
    case DType::kInt32:
      reinterpret_cast<int32_t*>(base)[off] = static_cast<int32_t>(v);
      break;
    case DType::kInt64:
      reinterpret_cast<int64_t*>(base)[off] = static_cast<int64_t>(v);
      break;
    case DType::kUInt8:
      reinterpret_cast<uint8_t*>(base)[off] = static_cast<uint8_t>(v);
      break;
  }
}

// Visits every element in row-major logical order, giving the strided element offset.
template <class F>
void for_each_offset(const TensorView& t, F&& f) {
  int64_t n = t.numel();
  if (n == 0) return;
  int64_t idx[TensorView::kMaxDims] = {0, 0, 0, 0};
  for (int64_t lin = 0; lin < n; ++lin) {
    int64_t off = 0;
    for (int d = 0; d < t.ndim; ++d) off += idx[d] * t.strides[d];
    f(lin, off);
    for (int d = t.ndim - 1; d >= 0; --d) {
      if (++idx[d] < t.sizes[d]) break;
      idx[d] = 0;
    }
  }
}

inline std::vector<double> to_dense(const TensorView& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for_each_offset(t, [&](int64_t lin, int64_t off) { out[lin] = load_scalar(t, off); });
  return out;
}

inline void from_dense(const TensorView& t, const std::vector<double>& src) {
  for_each_offset(t, [&](int64_t lin, int64_t off) { store_scalar(t, off, src[lin]); });
}

}  // namespace bsk::detail
