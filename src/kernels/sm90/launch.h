// Declarations of the per-instantiation entry points (defined in the generated inst/*.cu files)
// so that dispatch_sm90.cu stays light to compile.
#pragma once

#include "kernels/kernels.h"

namespace bsk::sm90 {

template <class Element, int kHeadDim>
void run_dense_fwd(const kernels::AttnFwdParams& p);

template <class Element, int kHeadDim>
void run_sparsek_fwd(const kernels::SparseKFwdParams& p);

}  // namespace bsk::sm90
