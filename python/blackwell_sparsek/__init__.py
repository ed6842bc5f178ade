"""BlackwellSparseK: SparseK and dense attention kernels for NVIDIA Hopper (sm_90a) with a
PyTorch front end.

Public API:

* :func:`attention` -- dense attention (GQA, end-aligned causal mask);
* :func:`sparsek_attention` -- SparseK attention (window + learned top-k with value gating);
* :func:`sparsek_select` -- the explicit selection ``(idx, gate)`` for inspection;
* :func:`sparsek_operator` -- the per-query selection summary ``(tau, theta_val, theta_idx,
  n_active)``;
* :class:`SparseKAttention` -- an ``nn.Module`` with projections and the scoring network;
* :func:`kernels_available`, :func:`build_info`, :class:`FallbackWarning`.

The operators live under ``torch.ops.blackwell_sparsek`` (see :mod:`blackwell_sparsek.ops`);
the PyTorch semantics they fall back to are in :mod:`blackwell_sparsek.reference`. Where the
sm_90a kernels cannot run (CPU tensors, another GPU, an extension built without CUDA or not
built at all) the PyTorch implementation runs and a :class:`FallbackWarning` says so, once per
reason. The backward pass is the PyTorch implementation for now (the slow path).
"""

from . import ops, reference  # noqa: F401  (registers the torch.library ops)
from ._backend import FallbackWarning, build_info, kernels_available
from .functional import attention, sparsek_attention, sparsek_operator, sparsek_select
from .modules import SparseKAttention

__version__ = "0.1.0"

__all__ = [
    "attention",
    "sparsek_attention",
    "sparsek_select",
    "sparsek_operator",
    "SparseKAttention",
    "kernels_available",
    "build_info",
    "FallbackWarning",
]
