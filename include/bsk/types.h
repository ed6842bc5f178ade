// Framework-free value types shared by the C++ API, the CPU references and the kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace bsk {

enum class DType : int { kFloat16, kBFloat16, kFloat32, kFloat64, kInt32, kInt64, kUInt8 };
enum class Device : int { kCPU, kCUDA };

const char* dtype_name(DType t);
std::size_t dtype_size(DType t);
const char* device_name(Device d);

// A strided view of memory owned by someone else. Sizes and strides are in elements.
// An absent optional tensor has defined == false.
struct TensorView {
  static constexpr int kMaxDims = 4;
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device = Device::kCPU;
  int device_index = 0;
  int ndim = 0;
  int64_t sizes[kMaxDims] = {0, 0, 0, 0};
  int64_t strides[kMaxDims] = {0, 0, 0, 0};
  bool defined = false;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= sizes[i];
    return n;
  }
  template <class T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
};

// Builds a view over contiguous (row-major) memory.
TensorView make_view(void* data, DType dtype, Device device, std::initializer_list<int64_t> sizes,
                     int device_index = 0);

// Invalid argument: shape, dtype, stride, device, alignment or a parameter out of range. The
// message names the function and the argument.
class InvalidArgument : public std::invalid_argument {
 public:
  InvalidArgument(const std::string& func, const std::string& arg, const std::string& what);
  const std::string& arg() const { return arg_; }

 private:
  std::string arg_;
};

// Wrong dtype for an argument (mapped to TypeError in Python).
class DTypeError : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

// The requested path exists in the API but not in this build (kernel not written yet, or not
// instantiated in a lean build).
class NotImplemented : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A CUDA runtime call failed.
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace bsk
