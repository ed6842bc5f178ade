// Build without CUDA: the API exists, every GPU entry point says plainly that it is absent.
#include "kernels/kernels.h"

namespace bsk::kernels {
namespace {
[[noreturn]] void absent(const char* what) {
  throw NotImplemented(std::string(what) +
                       ": CUDA kernels are not implemented in this build (built without CUDA)");
}
}  // namespace

bool available(int) {
  return false;
}
std::string instantiations() {
  return "none (built without CUDA)";
}
void attention_fwd(const AttnFwdParams&) {
  absent("attention_fwd");
}
std::size_t select_workspace_bytes(const SelectParams&) {
  return 0;
}
void sparsek_select(const SelectParams&) {
  absent("sparsek_select");
}
void sparsek_attention_fwd(const SparseKFwdParams&) {
  absent("sparsek_attention_fwd");
}
int sparsek_tile_q(int64_t) {
  return 128;
}

}  // namespace bsk::kernels
