"""Functional API of BlackwellSparseK.

Layout "BSHD" with arbitrary strides: ``q`` [B, Sq, H, D], ``k`` and ``v`` [B, Sk, Hkv, D],
``H % Hkv == 0`` (MHA, GQA, MQA; query head ``h`` uses kv head ``h // (H // Hkv)``). A BHSD
tensor viewed with ``.transpose(1, 2)`` is taken as it is, without a copy; only a tensor whose
last dimension is not contiguous is copied (``.contiguous()``) first. Queries are end-aligned
to the keys: query row ``i`` sits at absolute position ``p = Sk - Sq + i``.

dtypes: q, k, v share one of float16, bfloat16 (the dtypes of the CUDA kernels), float32,
float64 (PyTorch implementation). ``out`` has q's dtype; ``lse`` [B, H, Sq] is the natural-log
sum of exp of the scaled scores, float32 (float64 for float64 inputs).

Every argument is checked here, in Python, before anything runs: ``ValueError`` for shapes,
devices and values, ``TypeError`` for dtypes and non-tensor / non-int arguments, each naming
the argument. Everything is differentiable w.r.t. q, k, v (and the scores); the backward is
the PyTorch implementation for now (the slow path) -- see :mod:`blackwell_sparsek.ops`.
Where the CUDA kernels cannot run, the PyTorch implementation runs and warns once.
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import _validate as V
from . import ops
from . import reference as _ref

__all__ = ["attention", "sparsek_attention", "sparsek_select", "sparsek_operator"]


def _last_dim_contiguous(t: Tensor) -> Tensor:
    # The kernels and the reference take any stride except in the last dim.
    return t if t.size(-1) <= 1 or t.stride(-1) == 1 else t.contiguous()


def _scores_dtype(q_dtype: torch.dtype) -> torch.dtype:
    # The selection is computed from float32 scores (what the kernels take); float64 inputs
    # keep float64 scores so that a float64 computation is float64 end to end.
    return torch.float64 if q_dtype == torch.float64 else torch.float32


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
              scale: Optional[float] = None,
              return_lse: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Dense attention, ``softmax(scale * q k^T) v`` per head with GQA.

    Args:
        q: [B, Sq, H, D]. k, v: [B, Sk, Hkv, D], the dtype and device of q.
        causal: end-aligned causal mask (FlashAttention's convention): row ``i`` sees keys
            ``j <= Sk - Sq + i``; a row that sees no key has out 0 and lse -inf.
        scale: softmax scale, finite and > 0; default ``1 / sqrt(D)``.
        return_lse: also return ``lse`` [B, H, Sq] (float32; float64 for float64 inputs).

    Returns ``out`` [B, Sq, H, D] (q's dtype), or ``(out, lse)``.
    """
    fn = "attention"
    B, Sq, H, D, Sk, Hkv = V.qkv(fn, q, k, v)
    causal = V.flag(fn, "causal", causal)
    return_lse = V.flag(fn, "return_lse", return_lse)
    scale = V.scale(fn, scale, D)
    out, lse = ops.attention_fwd(_last_dim_contiguous(q), _last_dim_contiguous(k),
                                 _last_dim_contiguous(v), causal, scale)
    return (out, lse) if return_lse else out


def sparsek_attention(q: Tensor, k: Tensor, v: Tensor, scores: Tensor, k_select: int,
                      window: int, scale: Optional[float] = None,
                      return_lse: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """SparseK attention (SPEC section 1): each query attends to its recent ``window`` keys
    plus ``k_select`` older keys chosen by the learned, query-independent ``scores``.

    For the query at position ``p``: window ``W_p = {max(0, p - window + 1) <= j <= p}``,
    candidates ``C_p = {0 <= j <= p - window}`` (``j <= p`` when window = 0). If
    ``|C_p| <= k_select`` all candidates are selected with gate 1; otherwise ``Sel_p`` is the
    ``k_select`` candidates with the largest ``(u_j, j)`` and the gate is
    ``clip(u_j - tau_p, 0, 1)``, ``tau_p`` the threshold with
    ``sum_{C_p} clip(u_j - tau_p, 0, 1) = k_select``. Then
    ``out_p = sum_{j in W_p u Sel_p} softmax(scale q_p . k_j) g_pj v_j`` (g = 1 on the
    window), ``lse_p = log sum exp(scale q_p . k_j)`` over the same keys.

    Args:
        q: [B, Sq, H, D]; k, v: [B, Sk, Hkv, D] with ``Sq <= Sk`` (end-aligned queries).
        scores: [B, Sk, Hkv], one score per key and kv head (shared by the kv group's query
            heads). Any floating dtype is accepted and cast to float32 (float64 when q is
            float64) before the selection; the gradient flows back through the cast.
        k_select, window: ints >= 0, not both 0.
        scale: softmax scale, finite and > 0; default ``1 / sqrt(D)``.
        return_lse: also return ``lse`` [B, H, Sq].

    Returns ``out`` [B, Sq, H, D] (q's dtype), or ``(out, lse)``. Differentiable w.r.t. q, k,
    v and scores (through the SparseK operator: ``d tau / d u_j = [j in A_p] / |A_p|``). A row
    whose candidates include a non-finite score (with ``|C_p| > k_select``) is NaN.
    """
    fn = "sparsek_attention"
    B, Sq, H, D, Sk, Hkv = V.qkv(fn, q, k, v)
    V.scores(fn, scores, B, Sk, Hkv, q.device)
    V.sparsek_seqlens(fn, Sq, Sk)
    k_select, window = V.k_window(fn, k_select, window)
    return_lse = V.flag(fn, "return_lse", return_lse)
    scale = V.scale(fn, scale, D)
    sdt = _scores_dtype(q.dtype)
    s = scores if scores.dtype == sdt else scores.to(sdt)
    out, lse = ops.sparsek_attention_fwd(_last_dim_contiguous(q), _last_dim_contiguous(k),
                                         _last_dim_contiguous(v), s, k_select, window, scale)
    return (out, lse) if return_lse else out


def _check_select(fn, scores, seqlen_q, k_select, window):
    V.scores(fn, scores, None, None, None, None)
    seqlen_q = V.seqlen_q(fn, seqlen_q, scores.shape[1])
    k_select, window = V.k_window(fn, k_select, window)
    return seqlen_q, k_select, window


def sparsek_select(scores: Tensor, seqlen_q: int, k_select: int,
                   window: int) -> Tuple[Tensor, Tensor]:
    """The explicit SparseK selection, for inspection and plots: ``(idx, gate)``, both
    [B, Sq, Hkv, k_select].

    ``idx`` (int64) lists ``Sel_p`` sorted by ``(u_j, j)`` descending, padded with -1 where
    fewer than ``k_select`` candidates exist; ``gate`` (float32; float64 for float64 scores) is
    ``clip(u_j - tau_p, 0, 1)`` on ``Sel_p`` (1 when all candidates are selected), 0 in the
    padding, NaN in rows with a non-finite candidate score. The window keys are not listed
    (they are always attended). ``gate`` is differentiable w.r.t. ``scores``.

    Computed by the PyTorch implementation (``reference.sparsek_selection_ref``) on the
    scores' device: this materialises O(Sq * k_select) indices, which the attention itself
    never does. Use :func:`sparsek_operator` for the compact per-query summary.
    """
    seqlen_q, k_select, window = _check_select("sparsek_select", scores, seqlen_q, k_select,
                                               window)
    return _ref.sparsek_selection_ref(scores, seqlen_q, k_select, window)


def sparsek_operator(scores: Tensor, seqlen_q: int, k_select: int,
                     window: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The SparseK operator's per-query summary: ``(tau, theta_val, theta_idx, n_active)``,
    each [B, Hkv, Sq] -- what the attention kernel consumes.

    ``tau``: the threshold (-inf when all candidates are selected, NaN when a candidate score is
    not finite); ``(theta_val, theta_idx)``: the k-th selected ``(u_j, j)``, so that
    ``j in Sel_p  <=>  j in C_p and (u_j, j) >= (theta_val_p, theta_idx_p)`` ((-inf, -1) when
    all are selected); ``n_active = |{j in C_p : tau < u_j < tau + 1}|``. Scores of any
    floating dtype are cast to float32 (float64 stays float64); tau/theta_val have that dtype,
    theta_idx/n_active int32. Runs the selection kernel when available. Differentiable in tau
    and theta_val.
    """
    seqlen_q, k_select, window = _check_select("sparsek_operator", scores, seqlen_q, k_select,
                                               window)
    sdt = _scores_dtype(scores.dtype)
    s = scores if scores.dtype == sdt else scores.to(sdt)
    return ops.sparsek_select(_last_dim_contiguous(s), seqlen_q, k_select, window)
