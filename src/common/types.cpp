#include "bsk/types.h"

namespace bsk {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kUInt8:
      return "uint8";
  }
  return "unknown";
}

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat64:
    case DType::kInt64:
      return 8;
    case DType::kUInt8:
      return 1;
  }
  return 0;
}

const char* device_name(Device d) {
  return d == Device::kCPU ? "cpu" : "cuda";
}

TensorView make_view(void* data, DType dtype, Device device, std::initializer_list<int64_t> sizes,
                     int device_index) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  v.device_index = device_index;
  v.ndim = static_cast<int>(sizes.size());
  if (v.ndim > TensorView::kMaxDims) throw std::invalid_argument("make_view: more than 4 dims");
  int i = 0;
  for (int64_t s : sizes) v.sizes[i++] = s;
  int64_t stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.strides[d] = stride;
    stride *= v.sizes[d];
  }
  v.defined = true;
  return v;
}

InvalidArgument::InvalidArgument(const std::string& func, const std::string& arg,
                                 const std::string& what)
    : std::invalid_argument(func + ": argument '" + arg + "': " + what), arg_(arg) {}

}  // namespace bsk
