"""Pure-PyTorch reference of the BlackwellSparseK semantics (SPEC section 1 and 2).

This module is (a) the fallback of the public API where the compiled kernels are unavailable
(CPU, non-Hopper GPUs, extension not built) and (b) the backward "slow path" of the autograd
Functions. It runs on any device and any floating dtype.

Layout "BSHD" with arbitrary strides: ``q`` [B, Sq, H, D]; ``k``, ``v`` [B, Sk, Hkv, D];
``scores`` (u) [B, Sk, Hkv]. Query head ``h`` uses KV head ``h // (H // Hkv)``. Query row ``i``
sits at absolute position ``p = Sk - Sq + i`` (end-aligned).

Precision: fp16/bf16/fp32 inputs compute in float32, float64 stays float64; outputs come back in
the input dtype; ``lse`` is float32 (float64 for float64 inputs). The SparseK operator (the
threshold ``tau``, the selection, the active sets) is always computed in float64 from the scores,
like the C++ reference, and only rounded when it is returned.

Memory: nothing is ever S x S. Queries are processed in chunks (keyword ``chunk_q``; by default
sized so a chunk's main temporaries stay below ``_CHUNK_ELEMS`` elements). Per chunk of ``c``
queries the SparseK operator holds O(c * Sk) per (batch, kv head) and the attention holds
O(c * (c + window + k_select)) scores plus O(c * k_select * D) gathered keys/values; what is
kept across chunks (the selected indices, the autograd graph) is O(Sq * (k_select + window)).

SparseK operator, for a query at position p (these conventions match the C++ reference):

* candidates ``C_p = {j : 0 <= j <= p - window}`` (``j <= p`` when ``window == 0``),
  ``n_p = |C_p|``. Candidates are ordered by ``(u_j, j)`` descending (ties: the more recent key
  is larger).
* ``n_p <= k``: every candidate is selected with gate 1; ``tau = -inf``,
  ``theta = (-inf, -1)``, ``n_active = 0``. The scores are not used (a NaN there is harmless).
* ``n_p > k`` and some candidate score is NaN or +-inf: ``tau = NaN``, ``theta = (NaN, -1)``,
  ``n_active = 0``; the selection of that row has ``idx = -1`` and ``gate = NaN`` in all ``k``
  slots and the attention row (out and lse) is NaN. Such a row contributes nothing to any
  gradient (its outputs are NaN constants). This rule takes precedence over the k == 0 rule.
* ``n_p > k == 0``: ``tau = max_{C_p} u``, ``theta = (+inf, -1)``, ``n_active = 0``.
* otherwise ``tau`` = the smallest t with ``f(t) = sum_{j in C_p} clip(u_j - t, 0, 1) <= k``
  (then ``f(tau) == k``). f is piecewise linear with breakpoints at u_j and u_j - 1. Let R be
  the first breakpoint with f(R) <= k and L the one before it; on (L, R) the saturated keys
  (u_j > L + 1) and the unsaturated ones (L < u_j <= L + 1, the set A of that piece) are fixed,
  and ``tau = (sum_A u + n_sat - k) / |A|``. When f(R) == k exactly (e.g. the k-th and
  (k+1)-th scores are >= 1 apart) tau is R itself, with no rounding.
  ``theta`` = ``(u_j, j)`` of the k-th largest candidate; ``n_active = |A_p|`` with
  ``A_p = {j in C_p : tau < u_j < tau + 1}`` (strict; may be 0, e.g. when the k-th and the
  (k+1)-th score differ by >= 1).
* Selection ``Sel_p`` = the ``min(k, n_p)`` largest candidates; gate ``m_pj = clip(u_j - tau, 0,
  1)`` (1 when ``n_p <= k``). Gradient semantics: tau is a function of the scores through its
  active set, ``d tau / d u_j = [j in A_p] / |A_p|``; the gate of a selected key moves with
  ``u_j - tau`` only when ``j in A_p`` (strict inequalities: a key exactly at a kink has
  derivative 0). Hence ``d u_j = sum_p [j in A_p] (G_pj [j in Sel_p] - c_p)`` with
  ``c_p = (1/|A_p|) sum_{j in A_p, Sel_p} G_pj`` (SPEC section 1).

SparseK attention (value gating): ``U_p = W_p u Sel_p`` with the window
``W_p = {max(0, p - window + 1) <= j <= p}``; ``P = softmax_{U_p}(scale * q_p . k_j)``,
``o_p = sum P_pj g_pj v_j`` (``g = 1`` on the window, the gate on Sel_p),
``lse_p = log sum_{U_p} exp(s_pj)``.

Dense attention: GQA, optional end-aligned causal mask (row i sees ``j <= Sk - Sq + i``); a row
that sees no key (causal with Sq > Sk, or Sk == 0) has out 0 and lse -inf and zero gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "attention_ref",
    "attention_bwd_ref",
    "sparsek_operator_ref",
    "sparsek_selection_ref",
    "sparsek_attention_ref",
    "sparsek_attention_bwd_ref",
]

# Upper bound on the elements of a chunk's main temporaries (summed over the large buffers of
# one chunk). 2^25 elements is 128 MiB in float32 / 256 MiB in float64.
_CHUNK_ELEMS = 1 << 25

_INF = float("inf")
_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# helpers: dtypes, validation, chunking
# --------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _summary_dtype(scores_dtype: torch.dtype) -> torch.dtype:
    # tau / theta_val / gates are returned in the scores' dtype when it is float32 or float64;
    # half-precision scores get float32 (their threshold is not representable in 16 bits).
    return torch.float64 if scores_dtype == torch.float64 else torch.float32


def _pick_chunk(sq: int, cost, chunk_q: Optional[int]) -> int:
    """Query-chunk size: the user's ``chunk_q``, else the largest power-of-two fraction of Sq
    whose temporaries (``cost(c)`` elements) fit in ``_CHUNK_ELEMS``."""
    if chunk_q is not None:
        if int(chunk_q) < 1:
            raise ValueError(f"chunk_q must be >= 1, got {chunk_q}")
        return max(1, min(int(chunk_q), max(sq, 1)))
    c = max(sq, 1)
    while c > 1 and cost(c) > _CHUNK_ELEMS:
        c = (c + 1) // 2
    return c


def _check_qkv(fn: str, q: Tensor, k: Tensor, v: Tensor) -> Tuple[int, int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{fn}: {name} must be 4-D (BSHD), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating tensor, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{fn}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"{fn}: q, k, v must be on one device, got {q.device}, {k.device}, "
                         f"{v.device}")
    B, Sq, H, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{fn}: k must have shape [B, Sk, Hkv, D] = [{B}, Sk, Hkv, {D}], "
                         f"got {tuple(k.shape)}")
    Sk, Hkv = k.shape[1], k.shape[2]
    if tuple(v.shape[:3]) != (B, Sk, Hkv):
        raise ValueError(f"{fn}: v must have shape [{B}, {Sk}, {Hkv}, Dv], got {tuple(v.shape)}")
    if Hkv < 1 or H % Hkv != 0:
        raise ValueError(f"{fn}: the number of query heads ({H}) must be a multiple of the "
                         f"number of kv heads (k.shape[2] = {Hkv})")
    return B, Sq, H, D, Sk, Hkv


def _check_scores(fn: str, scores: Tensor, B: Optional[int] = None, Sk: Optional[int] = None,
                  Hkv: Optional[int] = None, device=None) -> None:
    if not isinstance(scores, Tensor):
        raise TypeError(f"{fn}: scores must be a torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise TypeError(f"{fn}: scores must be a floating tensor, got {scores.dtype}")
    if scores.dim() != 3:
        raise ValueError(f"{fn}: scores must be 3-D [B, Sk, Hkv], got {tuple(scores.shape)}")
    if B is not None and tuple(scores.shape) != (B, Sk, Hkv):
        raise ValueError(f"{fn}: scores must have shape [B, Sk, Hkv] = [{B}, {Sk}, {Hkv}], got "
                         f"{tuple(scores.shape)}")
    if device is not None and scores.device != device:
        raise ValueError(f"{fn}: scores must be on {device}, got {scores.device}")


def _check_sparsek_args(fn: str, sq: int, sk: int, k_select: int, window: int,
                        attention: bool) -> None:
    if int(k_select) != k_select or k_select < 0:
        raise ValueError(f"{fn}: k_select must be an integer >= 0, got {k_select}")
    if int(window) != window or window < 0:
        raise ValueError(f"{fn}: window must be an integer >= 0, got {window}")
    if attention and k_select == 0 and window == 0:
        raise ValueError(f"{fn}: k_select and window must not both be 0 (no key to attend to)")
    if sq < 0 or sq > sk:
        raise ValueError(f"{fn}: seqlen_q must satisfy 0 <= Sq <= Sk, got Sq={sq}, Sk={sk}")


def _check_like(fn: str, name: str, t: Tensor, shape, device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{fn}: {name} must be on {device}, got {t.device}")


def _default_scale(fn: str, scale: Optional[float], d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d) if d > 0 else 1.0
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{fn}: scale must be finite and > 0, got {scale}")
    return scale


def _heads_first(t: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, S, Hkv, D] -> [B, Hkv, S, D] in the compute dtype (a view when no cast is needed)."""
    return t.to(dtype).permute(0, 2, 1, 3)


def _q_chunk(q: Tensor, i0: int, i1: int, hkv: int, dtype: torch.dtype) -> Tensor:
    """q[:, i0:i1] as [B, Hkv, G, c, D]: query head h = hkv * G + g belongs to kv head hkv."""
    B, _, H, D = q.shape
    return q[:, i0:i1].to(dtype).reshape(B, i1 - i0, hkv, H // hkv, D).permute(0, 2, 3, 1, 4)


def _rows_to_bshd(o: Tensor) -> Tensor:
    """[B, Hkv, G, c, D] -> [B, c, H, D]."""
    B, Hkv, G, c, D = o.shape
    return o.permute(0, 3, 1, 2, 4).reshape(B, c, Hkv * G, D)


def _safe_softmax(s: Tensor) -> Tuple[Tensor, Tensor]:
    """Softmax over the last dim and its log-sum-exp; an all -inf row gives P = 0, lse = -inf
    (and zero gradients, not NaN)."""
    m = s.detach().amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    l = e.sum(dim=-1, keepdim=True)
    has = l > 0
    l_safe = torch.where(has, l, torch.ones_like(l))
    p = e / l_safe
    lse = torch.where(has, m + torch.log(l_safe), torch.full_like(l, -_INF))
    return p, lse.squeeze(-1)


# --------------------------------------------------------------------------------------------
# dense attention
# --------------------------------------------------------------------------------------------


def _dense_chunk_keys(sq: int, sk: int, i0: int, i1: int, causal: bool) -> int:
    """Number of leading keys any row of the chunk can see."""
    if not causal:
        return sk
    return max(0, min(sk, sk - sq + i1))  # last row i1-1 sees j <= sk - sq + i1 - 1


def _causal_mask(sq: int, sk: int, i0: int, i1: int, nk: int, device) -> Tensor:
    p = torch.arange(sk - sq + i0, sk - sq + i1, device=device)
    return torch.arange(nk, device=device)[None, :] <= p[:, None]  # [c, nk]


def attention_ref(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                  scale: Optional[float] = None, *,
                  chunk_q: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Dense attention. Returns ``(out [B, Sq, H, Dv] in q.dtype, lse [B, H, Sq])``.

    GQA: query head h uses kv head ``h // (H // Hkv)``. ``causal`` is end-aligned: row i sees
    keys ``j <= Sk - Sq + i``; a row that sees no key has out 0 and lse -inf. ``lse`` is the
    natural-log sum of exp of the scaled scores, float32 (float64 for float64 inputs).
    Differentiable by autograd; queries are processed in chunks of ``chunk_q``.
    """
    fn = "attention_ref"
    B, Sq, H, D, Sk, Hkv = _check_qkv(fn, q, k, v)
    G, Dv = H // Hkv, v.shape[3]
    scale = _default_scale(fn, scale, D)
    cdt = _compute_dtype(q.dtype)
    kh, vh = _heads_first(k, cdt), _heads_first(v, cdt)
    cq = _pick_chunk(Sq, lambda c: 3 * B * H * c * max(Sk, 1), chunk_q)
    outs, lses = [], []
    for i0 in range(0, Sq, cq):
        i1 = min(Sq, i0 + cq)
        c = i1 - i0
        nk = _dense_chunk_keys(Sq, Sk, i0, i1, causal)
        if nk == 0:
            outs.append(q.new_zeros((B, c, H, Dv), dtype=cdt))
            lses.append(torch.full((B, H, c), -_INF, dtype=cdt, device=q.device))
            continue
        qc = _q_chunk(q, i0, i1, Hkv, cdt)
        s = torch.einsum("bhgqd,bhnd->bhgqn", qc, kh[:, :, :nk]) * scale
        if causal:
            s = s.masked_fill(~_causal_mask(Sq, Sk, i0, i1, nk, q.device), -_INF)
        p, lse = _safe_softmax(s)
        o = torch.einsum("bhgqn,bhnd->bhgqd", p, vh[:, :, :nk])
        outs.append(_rows_to_bshd(o))
        lses.append(lse.reshape(B, H, c))
    if Sq == 0:
        return q.new_zeros((B, 0, H, Dv)), torch.zeros((B, H, 0), dtype=cdt, device=q.device)
    out = torch.cat(outs, dim=1).to(q.dtype)
    lse = torch.cat(lses, dim=2).to(cdt)
    return out, lse


def attention_bwd_ref(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                      dlse: Optional[Tensor], causal: bool, scale: Optional[float] = None, *,
                      chunk_q: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Explicit backward of :func:`attention_ref` (FlashAttention's recurrences, chunked).

    With ``P = exp(s - lse)``: ``dV = P^T dO``, ``dP = dO V^T``, ``D = rowsum(dO * O)``,
    ``dS = P (dP - D) + P dlse``, ``dQ = scale dS K``, ``dK = scale dS^T Q`` (dK, dV summed over
    the query heads of a group). ``dlse`` may be None. Rows whose lse is -inf have no keys and
    get zero gradients. Returns ``(dq, dk, dv)`` in the dtypes of q, k, v.
    """
    fn = "attention_bwd_ref"
    B, Sq, H, D, Sk, Hkv = _check_qkv(fn, q, k, v)
    G, Dv = H // Hkv, v.shape[3]
    _check_like(fn, "out", out, (B, Sq, H, Dv), q.device)
    _check_like(fn, "dout", dout, (B, Sq, H, Dv), q.device)
    _check_like(fn, "lse", lse, (B, H, Sq), q.device)
    if dlse is not None:
        _check_like(fn, "dlse", dlse, (B, H, Sq), q.device)
    scale = _default_scale(fn, scale, D)
    cdt = _compute_dtype(q.dtype)
    kh, vh = _heads_first(k, cdt), _heads_first(v, cdt)
    dq = torch.zeros((B, Sq, H, D), dtype=cdt, device=q.device)
    dk = torch.zeros((B, Hkv, Sk, D), dtype=cdt, device=q.device)
    dv = torch.zeros((B, Hkv, Sk, Dv), dtype=cdt, device=q.device)
    cq = _pick_chunk(Sq, lambda c: 4 * B * H * c * max(Sk, 1), chunk_q)
    for i0 in range(0, Sq, cq):
        i1 = min(Sq, i0 + cq)
        c = i1 - i0
        nk = _dense_chunk_keys(Sq, Sk, i0, i1, causal)
        if nk == 0:
            continue
        qc = _q_chunk(q, i0, i1, Hkv, cdt)
        doc = _q_chunk(dout, i0, i1, Hkv, cdt)
        oc = _q_chunk(out, i0, i1, Hkv, cdt)
        lc = lse[:, :, i0:i1].to(cdt).reshape(B, Hkv, G, c, 1)
        kc, vc = kh[:, :, :nk], vh[:, :, :nk]
        s = torch.einsum("bhgqd,bhnd->bhgqn", qc, kc) * scale
        if causal:
            s = s.masked_fill(~_causal_mask(Sq, Sk, i0, i1, nk, q.device), -_INF)
        empty = torch.isneginf(lc)  # rows with no key: P must be 0, not exp(-inf + inf)
        p = torch.where(empty, torch.zeros_like(s), torch.exp(s - lc))
        doc = torch.where(empty, torch.zeros_like(doc), doc)
        dv[:, :, :nk] += torch.einsum("bhgqn,bhgqd->bhnd", p, doc)
        dp = torch.einsum("bhgqd,bhnd->bhgqn", doc, vc)
        delta = (doc * torch.where(empty, torch.zeros_like(oc), oc)).sum(-1, keepdim=True)
        ds = p * (dp - delta)
        if dlse is not None:
            ds = ds + p * dlse[:, :, i0:i1].to(cdt).reshape(B, Hkv, G, c, 1)
        dq[:, i0:i1] = _rows_to_bshd(torch.einsum("bhgqn,bhnd->bhgqd", ds, kc)) * scale
        dk[:, :, :nk] += torch.einsum("bhgqn,bhgqd->bhnd", ds, qc) * scale
    return (dq.to(q.dtype), dk.permute(0, 2, 1, 3).to(k.dtype),
            dv.permute(0, 2, 1, 3).to(v.dtype))


# --------------------------------------------------------------------------------------------
# the SparseK operator
# --------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """Per (batch * kv head) row ``n`` and query row ``i`` (all float64 / int64)."""

    u: Tensor          # [N, Sk] float64 scores (detached), N = B * Hkv, n = b * Hkv + h
    n_p: Tensor        # [Sq] int64 candidate counts
    tau: Tensor        # [N, Sq] float64
    tau1: Tensor       # [N, Sq] float64, tau + 1 (one rounding, shared by every A_p test)
    n_active: Tensor   # [N, Sq] int64
    theta_val: Tensor  # [N, Sq] float64
    theta_idx: Tensor  # [N, Sq] int64
    dead: Tensor       # [N, Sq] bool: n_p > k and a non-finite candidate score (NaN rows)
    idx: Optional[Tensor]  # [N, Sq, keff] int64 selection sorted by (u, j) desc, -1 padded
    keff: int          # min(k_select, Sk): the widest selection that can occur


def _candidate_counts(sq: int, sk: int, window: int, device) -> Tensor:
    p = torch.arange(sk - sq, sk, device=device, dtype=torch.int64)
    n = (p - window + 1) if window > 0 else (p + 1)
    return n.clamp(min=0)


def _sparsek_plan(scores: Tensor, sq: int, k_select: int, window: int,
                  chunk_q: Optional[int], want_idx: bool) -> _Plan:
    """Run the SparseK operator for every query row (no autograd).

    Algorithm. Per (b, kv head) the keys are sorted once by (u, j) descending; for a query p its
    candidates are the keys with j < n_p, which in that global order form a masked subsequence,
    so per query only a mask and two prefix sums (candidate count ``cnt`` and candidate score
    sum ``cs`` over the global order) are needed -- no per-query sort. f_p(t) = sum_{C_p}
    clip(u - t, 0, 1) is evaluated at any t from ``#{cand > t}``, ``#{cand > t+1}`` and their sums,
    which are prefix values at positions found once per (b, h) by binary search in the sorted
    scores (the position of "u > x" in the global order does not depend on p). The breakpoints
    of every f_p are among {u_j, u_j - 1} (a superset is harmless: f_p is linear between any
    consecutive ones); tau's piece is the one ending at the first breakpoint with f_p <= k,
    found by bisection over the sorted breakpoints. Cost per query O(Sk) for the prefix sums
    plus O(log Sk); memory per chunk O(c * Sk) per (b, h).
    """
    B, Sk, Hkv = scores.shape
    N, dev, f64 = B * Hkv, scores.device, torch.float64
    u = scores.detach().to(f64).permute(0, 2, 1).reshape(N, Sk)
    n_p = _candidate_counts(sq, Sk, window, dev)
    keff = min(int(k_select), Sk)
    tau = torch.empty((N, sq), dtype=f64, device=dev)
    tau1 = torch.empty_like(tau)
    theta_val = torch.empty_like(tau)
    theta_idx = torch.empty((N, sq), dtype=torch.int64, device=dev)
    n_active = torch.zeros((N, sq), dtype=torch.int64, device=dev)
    idx = torch.full((N, sq, keff), -1, dtype=torch.int64, device=dev) if want_idx else None
    if sq == 0 or N == 0:
        dead = torch.zeros((N, sq), dtype=torch.bool, device=dev)
        return _Plan(u, n_p, tau, tau1, n_active, theta_val, theta_idx, dead, idx, keff)

    # Rows whose candidates include a non-finite score (a prefix count over j).
    nonfin = F.pad((~torch.isfinite(u)).to(torch.int64).cumsum(-1), (1, 0))  # [N, Sk+1]
    dead = (nonfin[:, n_p] > 0) & (n_p > k_select)[None, :]

    # Global order by (u, j) descending: flip j so a stable descending sort puts the larger j
    # first among equal scores. NaN sorts as +inf (so in a row with n_p <= k a NaN candidate
    # is listed first; in a dead row the order is irrelevant).
    key = torch.where(torch.isnan(u), torch.full_like(u, _INF), u)
    w, perm = torch.sort(key.flip(-1), dim=-1, descending=True, stable=True)
    order = (Sk - 1) - perm                    # key index at each sorted position
    asc = w.flip(-1).contiguous()              # ascending copy for searchsorted

    def count_gt(x: Tensor) -> Tensor:         # #{all keys with u > x} == a sorted position
        return Sk - torch.searchsorted(asc, x.contiguous(), right=True)

    def count_ge(x: Tensor) -> Tensor:
        return Sk - torch.searchsorted(asc, x.contiguous(), right=False)

    # Breakpoints t in {w, w - 1} with their "t + 1" partner ({w + 1, w}: the pair shares the
    # exact w, so the key at w is classified exactly for t = w - 1). Non-finite ones go last
    # and are never visited (the search runs over the first n_valid entries only).
    fin = torch.isfinite(w)
    big = torch.full_like(w, _INF)
    t_lo = torch.cat([torch.where(fin, w, big), torch.where(fin, w - 1, big)], dim=-1)
    t_hi = torch.cat([torch.where(fin, w + 1, big), torch.where(fin, w, big)], dim=-1)
    t_lo, bperm = torch.sort(t_lo, dim=-1)
    t_hi = t_hi.gather(-1, bperm)
    pos_lo = count_gt(t_lo)      # [N, 2Sk] sorted position of "u > t"
    pos_sat = count_ge(t_hi)     # "u >= t + 1": saturated when f is evaluated at t itself
    pos_hi = count_gt(t_hi)      # "u > t + 1": saturated on the open piece right of t
    n_valid = 2 * fin.sum(-1, keepdim=True)            # [N, 1]
    n_bp = 2 * Sk
    iters = math.ceil(math.log2(n_bp + 1)) + 1
    wz = torch.where(fin, w, torch.zeros_like(w))      # sums never see +-inf
    kf = float(k_select)

    # per query: mask + cnt + cs + cumsum scratch, each over Sk
    cq = _pick_chunk(sq, lambda c: N * c * (4 * (Sk + 1) + 2 * keff), chunk_q)
    for i0 in range(0, sq, cq):
        i1 = min(sq, i0 + cq)
        c = i1 - i0
        npc = n_p[i0:i1]
        cand = order[:, None, :] < npc[None, :, None]                             # [N,c,Sk]
        cnt = F.pad(cand.cumsum(-1), (1, 0)).contiguous()                          # int64
        cs = F.pad(torch.where(cand, wz[:, None, :], torch.zeros((), dtype=f64,
                                                                    device=dev)).cumsum(-1),
                   (1, 0))
        del cand

        def at(a: Tensor, pos: Tensor) -> Tensor:  # a[n, q, pos[n, q]]
            return a.gather(-1, pos.unsqueeze(-1)).squeeze(-1)

        def sums(bi: Tensor, hi_pos: Tensor):
            """Candidates above t (count c0, sum s0) and above t + 1 (c1, s1; strict or not
            per hi_pos) at the breakpoints bi [N, c]."""
            p0, p1 = pos_lo.gather(1, bi), hi_pos.gather(1, bi)
            return at(cnt, p0).to(f64), at(cnt, p1).to(f64), at(cs, p0), at(cs, p1)

        def f_at(bi: Tensor) -> Tensor:
            # f(t) = #{u >= t+1} + sum_{t < u < t+1} (u - t). With the key at exactly t + 1
            # counted as saturated, an empty open interval gives an exact integer: f is exact
            # on every flat stretch *including its right end*, so rounding can disturb the
            # monotonicity of f only within rounding distance of tau and the bisection below
            # cannot land on a far piece (e.g. when the k-th and (k+1)-th scores are >= 1 apart
            # and fl(u_k - 1) + 1 != u_k).
            c0, c1, s0, s1 = sums(bi, pos_sat)
            return c1 + (s0 - s1) - (c0 - c1) * t_lo.gather(1, bi)

        # Bisection for R = the first sorted breakpoint with f <= k (f_p is non-increasing).
        lo = torch.zeros((N, c), dtype=torch.int64, device=dev)
        hi = n_valid.expand(N, c).clone()
        for _ in range(iters):
            live = lo < hi
            mid = torch.minimum((lo + hi) // 2, torch.full_like(lo, n_bp - 1))
            ok = f_at(mid) <= kf
            hi = torch.where(live & ok, mid, hi)
            lo = torch.where(live & ~ok, mid + 1, lo)
        r_idx = lo.clamp(max=n_bp - 1)
        f_r, t_r = f_at(r_idx), t_lo.gather(1, r_idx)
        # The piece (L, R]: active = candidates in (L, L + 1], saturated = above L + 1;
        # f(t) = n_sat + sum_A (u - t) = k there.
        c0, c1, s0, s1 = sums((r_idx - 1).clamp(min=0), pos_hi)
        # n_sat - k is an exact integer, added once to the active sum. (c0 == c1 cannot happen
        # on a piece where f crosses k; the guard is for rounding only.)
        tau_c = torch.where((f_r == kf) | (c0 == c1), t_r,
                            ((s0 - s1) + (c1 - kf)) / torch.where(c0 == c1, 1.0, c0 - c1))
        if k_select == 0:
            # tau is the largest candidate: the first candidate in the global order.
            top = torch.searchsorted(cnt, torch.ones((N, c, 1), dtype=torch.int64, device=dev))
            tau_c = w.gather(1, (top.squeeze(-1) - 1).clamp(0, Sk - 1))

        allsel = (npc <= k_select)[None, :].expand(N, c)
        dc = dead[:, i0:i1]
        gen = ~allsel & ~dc
        tau_c = torch.where(gen, tau_c, torch.zeros_like(tau_c))
        tau1_c = tau_c + 1.0
        if k_select > 0:
            na = at(cnt, count_gt(tau_c)) - at(cnt, count_ge(tau1_c))
            kth = (torch.searchsorted(cnt, torch.full((N, c, 1), k_select, dtype=torch.int64,
                                                      device=dev)).squeeze(-1) - 1)
            kth = kth.clamp(0, Sk - 1)
            th_i = order.gather(1, kth)
            th_v = u.gather(1, th_i)
        else:
            na = torch.zeros_like(r_idx)
            th_i = torch.full_like(r_idx, -1)
            th_v = torch.full_like(tau_c, _INF)

        neg = torch.full_like(tau_c, -_INF)
        nan = torch.full_like(tau_c, _NAN)
        tau[:, i0:i1] = torch.where(allsel, neg, torch.where(dc, nan, tau_c))
        tau1[:, i0:i1] = torch.where(allsel, neg, torch.where(dc, nan, tau1_c))
        theta_val[:, i0:i1] = torch.where(allsel, neg, torch.where(dc, nan, th_v))
        theta_idx[:, i0:i1] = torch.where(gen, th_i, torch.full_like(th_i, -1))
        n_active[:, i0:i1] = torch.where(gen, na, torch.zeros_like(na))

        if want_idx and keff > 0:
            # The r-th selected key is the r-th candidate in the global order.
            ranks = torch.arange(1, keff + 1, device=dev, dtype=torch.int64)
            pos = torch.searchsorted(cnt, ranks.expand(N, c, keff).contiguous()) - 1
            sel = order.gather(1, pos.clamp(0, Sk - 1).reshape(N, c * keff)).reshape(N, c, keff)
            ok = (ranks[None, None, :] <= npc[None, :, None]) & ~dc[:, :, None]
            idx[:, i0:i1] = torch.where(ok, sel, torch.full_like(sel, -1))
        del cnt, cs

    return _Plan(u, n_p, tau, tau1, n_active, theta_val, theta_idx, dead, idx, keff)


def _active_matvec(u: Tensor, tau: Tensor, tau1: Tensor, n_p: Tensor, coef: Tensor,
                   chunk_q: Optional[int]) -> Tensor:
    """``r_j = sum_p [j in A_p] coef_p`` with ``A_p = {j < n_p : tau_p < u_j < tau1_p}``.

    Chunked over p: O(c * Sk) per (b, h) per chunk. Rows with an empty A_p (tau = -inf/NaN,
    k == 0, ...) contribute nothing; ``coef`` there is ignored even when it is NaN.
    """
    N, Sk = u.shape
    sq = tau.shape[1]
    out = torch.zeros_like(u)
    jj = torch.arange(Sk, device=u.device)
    cq = _pick_chunk(sq, lambda c: 3 * N * c * Sk, chunk_q)
    for i0 in range(0, sq, cq):
        i1 = min(sq, i0 + cq)
        a = ((jj[None, None, :] < n_p[None, i0:i1, None])
             & (u[:, None, :] > tau[:, i0:i1, None])
             & (u[:, None, :] < tau1[:, i0:i1, None]))
        out += torch.where(a, coef[:, i0:i1, None], torch.zeros((), dtype=u.dtype,
                                                                device=u.device)).sum(1)
    return out


class _TauFn(torch.autograd.Function):
    """tau as a differentiable function of the scores: value precomputed by the operator,
    derivative ``d tau_p / d u_j = [j in A_p] / |A_p|`` (tau = (n_sat + sum_A u - k) / |A|)."""

    @staticmethod
    def forward(ctx, u, tau, tau1, n_active, n_p, chunk_q):
        ctx.save_for_backward(u, tau, tau1, n_active, n_p)
        ctx.chunk_q = chunk_q
        return tau.clone()

    @staticmethod
    def backward(ctx, g_tau):
        u, tau, tau1, n_active, n_p = ctx.saved_tensors
        has = n_active > 0
        coef = torch.where(has, g_tau / n_active.clamp(min=1).to(g_tau.dtype),
                           torch.zeros_like(g_tau))
        du = _active_matvec(u.detach(), tau, tau1, n_p, coef, ctx.chunk_q)
        return du, None, None, None, None, None


def _selected_gates(u_graph: Tensor, tau_graph: Tensor, plan: _Plan, i0: int,
                    i1: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Gates of the selection rows i0:i1: ``(gate [N, c, keff] float64, valid, active)``.

    ``gate = clip(u_j - tau_p, 0, 1)`` (1 when n_p <= k, 0 in padding, NaN in dead rows); the
    autograd graph runs only through selected keys of A_p, where ``gate = u_j - tau_p``.
    """
    idx = plan.idx[:, i0:i1]
    N, c, kk = idx.shape
    valid = idx >= 0
    us = u_graph.gather(1, idx.clamp(min=0).reshape(N, c * kk)).reshape(N, c, kk)
    usd = us.detach()
    tau_c = plan.tau[:, i0:i1, None]
    act = valid & (usd > tau_c) & (usd < plan.tau1[:, i0:i1, None])
    const = (usd - tau_c).clamp(0.0, 1.0)
    # tau = -inf exactly on the rows with n_p <= k: every candidate is kept with gate 1 (even a
    # candidate scored -inf, whose clip would be NaN).
    const = torch.where(torch.isneginf(tau_c), torch.ones_like(const), const)
    const = torch.where(valid, const, torch.zeros_like(const))
    const = torch.where(plan.dead[:, i0:i1, None], torch.full_like(const, _NAN), const)
    gate = torch.where(act, us - tau_graph[:, i0:i1, None], const)
    return gate, valid, act


def _tau_graph(scores: Tensor, plan: _Plan, chunk_q: Optional[int]) -> Tuple[Tensor, Tensor]:
    """(u as float64 [N, Sk] connected to ``scores``, tau [N, Sq] with its gradient rule)."""
    B, Sk, Hkv = scores.shape
    u_graph = scores.to(torch.float64).permute(0, 2, 1).reshape(B * Hkv, Sk)
    if not (torch.is_grad_enabled() and scores.requires_grad):
        return u_graph, plan.tau
    tau_graph = _TauFn.apply(u_graph, plan.tau, plan.tau1, plan.n_active, plan.n_p, chunk_q)
    return u_graph, tau_graph


def sparsek_operator_ref(scores: Tensor, seqlen_q: int, k_select: int, window: int, *,
                         chunk_q: Optional[int] = None
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The SparseK operator summary per query: ``(tau, theta_val, theta_idx, n_active)``.

    ``scores`` [B, Sk, Hkv]; outputs [B, Hkv, Sq]: tau and theta_val in the scores' dtype
    (float32 for float32/half scores, float64 for float64), theta_idx and n_active int32. See
    the module docstring for the exact conventions (n_p <= k, k == 0, non-finite scores).
    Membership test: ``j in Sel_p  <=>  j in C_p and (u_j, j) >= (theta_val, theta_idx)``.
    Computed in float64; no gradient.
    """
    fn = "sparsek_operator_ref"
    _check_scores(fn, scores)
    B, Sk, Hkv = scores.shape
    _check_sparsek_args(fn, seqlen_q, Sk, k_select, window, attention=False)
    with torch.no_grad():
        plan = _sparsek_plan(scores, int(seqlen_q), int(k_select), int(window), chunk_q,
                             want_idx=False)
    sdt = _summary_dtype(scores.dtype)
    shape = (B, Hkv, int(seqlen_q))
    return (plan.tau.reshape(shape).to(sdt), plan.theta_val.reshape(shape).to(sdt),
            plan.theta_idx.reshape(shape).to(torch.int32),
            plan.n_active.reshape(shape).to(torch.int32))


def sparsek_selection_ref(scores: Tensor, seqlen_q: int, k_select: int, window: int, *,
                          chunk_q: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Explicit SparseK selection: ``(idx, gate)``, both [B, Sq, Hkv, k_select].

    ``idx`` (int64) lists Sel_p sorted by (u_j, j) descending, padded with -1 (rows with
    n_p < k); ``gate`` = clip(u_j - tau_p, 0, 1) on Sel_p (1 when n_p <= k), 0 in padding, NaN
    in dead rows (whose idx is all -1). ``gate`` is differentiable w.r.t. ``scores`` with the
    SparseK operator's gradient (tau moves with its active set, no autograd through the sort).
    Gate dtype: float64 for float64 scores, else float32.
    """
    fn = "sparsek_selection_ref"
    _check_scores(fn, scores)
    B, Sk, Hkv = scores.shape
    _check_sparsek_args(fn, seqlen_q, Sk, k_select, window, attention=False)
    sq, k_select = int(seqlen_q), int(k_select)
    with torch.no_grad():
        plan = _sparsek_plan(scores, sq, k_select, int(window), chunk_q, want_idx=True)
    u_graph, tau_graph = _tau_graph(scores, plan, chunk_q)
    N, keff = B * Hkv, plan.keff
    if keff > 0 and sq > 0:
        gate, _, _ = _selected_gates(u_graph, tau_graph, plan, 0, sq)
    else:
        gate = u_graph.new_zeros((N, sq, keff))
    idx = plan.idx
    if k_select > keff:  # k > Sk: the slots beyond Sk are always padding
        idx = F.pad(idx, (0, k_select - keff), value=-1)
        gate = F.pad(gate, (0, k_select - keff), value=0.0)
    idx = idx.reshape(B, Hkv, sq, k_select).permute(0, 2, 1, 3).contiguous()
    gate = gate.reshape(B, Hkv, sq, k_select).permute(0, 2, 1, 3).contiguous()
    return idx, gate.to(_summary_dtype(scores.dtype))


# --------------------------------------------------------------------------------------------
# SparseK attention
# --------------------------------------------------------------------------------------------


class _ChunkKeys(NamedTuple):
    lo: int              # window band [lo, hi) of key indices (hi - lo may be 0)
    hi: int
    wmask: Tensor        # [c, hi - lo] bool: key in W_p
    sel_idx: Tensor      # [B, Hkv, c, keff] int64 clamped to >= 0 (valid marks the real ones)
    valid: Tensor        # [B, Hkv, c, keff] bool


def _chunk_keys(plan: _Plan, B: int, Hkv: int, sq: int, sk: int, window: int, i0: int,
                i1: int, device) -> _ChunkKeys:
    p0, p1 = sk - sq + i0, sk - sq + i1 - 1
    if window > 0:
        lo, hi = max(0, p0 - window + 1), p1 + 1
    else:
        lo = hi = 0
    pc = torch.arange(p0, p1 + 1, device=device)
    jb = torch.arange(lo, hi, device=device)
    wmask = (jb[None, :] <= pc[:, None]) & (jb[None, :] > pc[:, None] - window)
    c, kk = i1 - i0, plan.keff
    idx = plan.idx[:, i0:i1].reshape(B, Hkv, c, kk)
    return _ChunkKeys(lo, hi, wmask, idx.clamp(min=0), idx >= 0)


def _gather_keys(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, Hkv, Sk, D], idx [B, Hkv, c, kk] -> [B, Hkv, c, kk, D]."""
    B, Hkv, c, kk = idx.shape
    D = x.shape[-1]
    flat = idx.reshape(B, Hkv, c * kk, 1).expand(B, Hkv, c * kk, D)
    return x.gather(2, flat).reshape(B, Hkv, c, kk, D)


def _scatter_keys(acc: Tensor, idx: Tensor, val: Tensor) -> None:
    """acc [B, Hkv, Sk, D] += val [B, Hkv, c, kk, D] at keys idx [B, Hkv, c, kk]."""
    B, Hkv, c, kk = idx.shape
    D = acc.shape[-1]
    flat = idx.reshape(B, Hkv, c * kk, 1).expand(B, Hkv, c * kk, D)
    acc.scatter_add_(2, flat, val.reshape(B, Hkv, c * kk, D))


def _sparsek_chunk_cost(B: int, H: int, Hkv: int, D: int, window: int, keff: int):
    return lambda c: 4 * B * H * c * (c + window + keff) + 3 * B * Hkv * c * keff * D


def _prepare_sparsek(fn, q, k, v, scores, k_select, window, scale):
    B, Sq, H, D, Sk, Hkv = _check_qkv(fn, q, k, v)
    _check_scores(fn, scores, B, Sk, Hkv, q.device)
    _check_sparsek_args(fn, Sq, Sk, k_select, window, attention=True)
    return B, Sq, H, D, Sk, Hkv, _default_scale(fn, scale, D)


def sparsek_attention_ref(q: Tensor, k: Tensor, v: Tensor, scores: Tensor, k_select: int,
                          window: int, scale: Optional[float] = None, *,
                          chunk_q: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Value-gated SparseK attention (SPEC section 1). Returns ``(out, lse)``.

    For the query at p: keys ``U_p = W_p u Sel_p``, ``P = softmax_{U_p}(scale q_p . k_j)``,
    ``out_p = sum P_pj g_pj v_j`` (g = 1 on the window, the SparseK gate on Sel_p),
    ``lse_p = log sum_{U_p} exp(s_pj)``. Dead rows (a non-finite candidate score with n_p > k)
    give NaN out and lse. ``out`` has q's dtype, ``lse`` [B, H, Sq] is float32 (float64 for
    float64 inputs). Differentiable by autograd w.r.t. q, k, v and scores. Per chunk the
    window keys are a contiguous band and the selected keys are gathered.
    """
    fn = "sparsek_attention_ref"
    B, Sq, H, D, Sk, Hkv, scale = _prepare_sparsek(fn, q, k, v, scores, k_select, window,
                                                   scale)
    k_select, window = int(k_select), int(window)
    G, Dv = H // Hkv, v.shape[3]
    cdt = _compute_dtype(q.dtype)
    with torch.no_grad():
        plan = _sparsek_plan(scores, Sq, k_select, window, chunk_q, want_idx=True)
    u_graph, tau_graph = _tau_graph(scores, plan, chunk_q)
    kh, vh = _heads_first(k, cdt), _heads_first(v, cdt)
    keff = plan.keff
    cq = _pick_chunk(Sq, _sparsek_chunk_cost(B, H, Hkv, max(D, Dv), window, keff), chunk_q)
    outs, lses = [], []
    for i0 in range(0, Sq, cq):
        i1 = min(Sq, i0 + cq)
        c = i1 - i0
        ck = _chunk_keys(plan, B, Hkv, Sq, Sk, window, i0, i1, q.device)
        qc = _q_chunk(q, i0, i1, Hkv, cdt)
        parts = []
        if ck.hi > ck.lo:
            s_w = torch.einsum("bhgqd,bhnd->bhgqn", qc, kh[:, :, ck.lo:ck.hi]) * scale
            parts.append(s_w.masked_fill(~ck.wmask, -_INF))
        if keff > 0:
            gate, _, _ = _selected_gates(u_graph, tau_graph, plan, i0, i1)
            gate = gate.reshape(B, Hkv, c, keff)
            gate = torch.where(ck.valid, gate, torch.zeros_like(gate)).to(cdt)  # no NaN * 0
            ks, vs = _gather_keys(kh, ck.sel_idx), _gather_keys(vh, ck.sel_idx)
            s_s = torch.einsum("bhgqd,bhqkd->bhgqk", qc, ks) * scale
            parts.append(s_s.masked_fill(~ck.valid[:, :, None], -_INF))
        p, lse = _safe_softmax(torch.cat(parts, dim=-1))
        nw = ck.hi - ck.lo
        o = 0
        if nw > 0:
            o = torch.einsum("bhgqn,bhnd->bhgqd", p[..., :nw], vh[:, :, ck.lo:ck.hi])
        if keff > 0:
            o = o + torch.einsum("bhgqk,bhqkd->bhgqd", p[..., nw:] * gate[:, :, None], vs)
        dead = plan.dead[:, i0:i1].reshape(B, Hkv, 1, c)
        o = torch.where(dead[..., None], torch.full_like(o, _NAN), o)
        lse = torch.where(dead, torch.full_like(lse, _NAN), lse)
        outs.append(_rows_to_bshd(o))
        lses.append(lse.reshape(B, H, c))
    if Sq == 0:
        return q.new_zeros((B, 0, H, Dv)), torch.zeros((B, H, 0), dtype=cdt, device=q.device)
    return torch.cat(outs, dim=1).to(q.dtype), torch.cat(lses, dim=2)


def sparsek_attention_bwd_ref(q: Tensor, k: Tensor, v: Tensor, scores: Tensor, out: Tensor,
                              lse: Tensor, dout: Tensor, dlse: Optional[Tensor], k_select: int,
                              window: int, scale: Optional[float] = None, *,
                              chunk_q: Optional[int] = None
                              ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Explicit backward of :func:`sparsek_attention_ref` (SPEC section 1), chunked.

    With ``P = exp(s - lse)`` over U_p and gates g: ``dV_j += P g dO``, ``dP = g (dO . v_j)``,
    ``D_p = dO . o_p``, ``dS = P (dP - D) (+ P dlse)``, ``dQ = scale dS K``,
    ``dK = scale dS^T Q``; gate gradient ``G_pj = sum_{heads of the group} P_pj (dO_p . v_j)``
    on selected keys, and through the operator
    ``d u_j = sum_p [j in A_p] (G_pj [j in Sel_p] - c_p)``,
    ``c_p = (1/|A_p|) sum_{j in A_p, Sel_p} G_pj``. ``dlse`` may be None. Dead rows contribute
    nothing. Returns ``(dq, dk, dv, dscores)`` in the dtypes of q, k, v, scores. Memory:
    per-chunk temporaries plus O(Sq * k_select) for the selection.
    """
    fn = "sparsek_attention_bwd_ref"
    B, Sq, H, D, Sk, Hkv, scale = _prepare_sparsek(fn, q, k, v, scores, k_select, window,
                                                   scale)
    k_select, window = int(k_select), int(window)
    G, Dv = H // Hkv, v.shape[3]
    _check_like(fn, "out", out, (B, Sq, H, Dv), q.device)
    _check_like(fn, "dout", dout, (B, Sq, H, Dv), q.device)
    _check_like(fn, "lse", lse, (B, H, Sq), q.device)
    if dlse is not None:
        _check_like(fn, "dlse", dlse, (B, H, Sq), q.device)
    cdt, f64, dev = _compute_dtype(q.dtype), torch.float64, q.device
    N = B * Hkv
    with torch.no_grad():
        plan = _sparsek_plan(scores, Sq, k_select, window, chunk_q, want_idx=True)
        kh, vh = _heads_first(k, cdt), _heads_first(v, cdt)
        keff = plan.keff
        dq = torch.zeros((B, Sq, H, D), dtype=cdt, device=dev)
        dk = torch.zeros((B, Hkv, Sk, D), dtype=cdt, device=dev)
        dv = torch.zeros((B, Hkv, Sk, Dv), dtype=cdt, device=dev)
        du = torch.zeros((N, Sk), dtype=f64, device=dev)
        cp = torch.zeros((N, Sq), dtype=f64, device=dev)  # c_p
        cq = _pick_chunk(Sq, _sparsek_chunk_cost(B, H, Hkv, max(D, Dv), window, keff), chunk_q)
        for i0 in range(0, Sq, cq):
            i1 = min(Sq, i0 + cq)
            c = i1 - i0
            ck = _chunk_keys(plan, B, Hkv, Sq, Sk, window, i0, i1, dev)
            qc = _q_chunk(q, i0, i1, Hkv, cdt)
            doc = _q_chunk(dout, i0, i1, Hkv, cdt)
            oc = _q_chunk(out, i0, i1, Hkv, cdt)
            dead = plan.dead[:, i0:i1].reshape(B, Hkv, 1, c, 1)
            doc = torch.where(dead, torch.zeros_like(doc), doc)
            lc = lse[:, :, i0:i1].to(cdt).reshape(B, Hkv, G, c, 1)
            lc = torch.where(dead, torch.zeros_like(lc), lc)
            delta = (doc * torch.where(dead, torch.zeros_like(oc), oc)).sum(-1, keepdim=True)
            dl = None
            if dlse is not None:
                dl = dlse[:, :, i0:i1].to(cdt).reshape(B, Hkv, G, c, 1)
                dl = torch.where(dead, torch.zeros_like(dl), dl)
            dqc = torch.zeros_like(qc)

            def probs(s: Tensor) -> Tensor:  # P = exp(s - lse); masked (-inf) and dead -> 0
                return torch.where(dead, torch.zeros_like(s), torch.exp(s - lc))

            if ck.hi > ck.lo:
                kb, vb = kh[:, :, ck.lo:ck.hi], vh[:, :, ck.lo:ck.hi]
                s = torch.einsum("bhgqd,bhnd->bhgqn", qc, kb) * scale
                p = probs(s.masked_fill(~ck.wmask, -_INF))
                dv[:, :, ck.lo:ck.hi] += torch.einsum("bhgqn,bhgqd->bhnd", p, doc)
                ds = p * (torch.einsum("bhgqd,bhnd->bhgqn", doc, vb) - delta)
                if dl is not None:
                    ds = ds + p * dl
                dqc += torch.einsum("bhgqn,bhnd->bhgqd", ds, kb)
                dk[:, :, ck.lo:ck.hi] += torch.einsum("bhgqn,bhgqd->bhnd", ds, qc) * scale
            if keff > 0:
                gate64, valid, act = _selected_gates(plan.u, plan.tau, plan, i0, i1)
                gate = gate64.reshape(B, Hkv, c, keff)
                gate = torch.where(ck.valid, gate, torch.zeros_like(gate)).to(cdt)
                ks, vs = _gather_keys(kh, ck.sel_idx), _gather_keys(vh, ck.sel_idx)
                s = torch.einsum("bhgqd,bhqkd->bhgqk", qc, ks) * scale
                p = probs(s.masked_fill(~ck.valid[:, :, None], -_INF))
                pg = p * gate[:, :, None]
                _scatter_keys(dv, ck.sel_idx, torch.einsum("bhgqk,bhgqd->bhqkd", pg, doc))
                dpv = torch.einsum("bhgqd,bhqkd->bhgqk", doc, vs)  # dO_p . v_j
                ds = p * (gate[:, :, None] * dpv - delta)
                if dl is not None:
                    ds = ds + p * dl
                dqc += torch.einsum("bhgqk,bhqkd->bhgqd", ds, ks)
                _scatter_keys(dk, ck.sel_idx,
                              torch.einsum("bhgqk,bhgqd->bhqkd", ds, qc) * scale)
                # Gate gradient G_pj (summed over the group's heads), kept on A_p n Sel_p.
                g_sel = (p * dpv).sum(2).reshape(N, c, keff).to(f64)
                g_sel = torch.where(act, g_sel, torch.zeros_like(g_sel))
                du.scatter_add_(1, ck.sel_idx.reshape(N, c * keff), g_sel.reshape(N, c * keff))
                na = plan.n_active[:, i0:i1]
                cp[:, i0:i1] = torch.where(na > 0, g_sel.sum(-1) / na.clamp(min=1).to(f64),
                                           torch.zeros_like(cp[:, i0:i1]))
            dq[:, i0:i1] = _rows_to_bshd(dqc) * scale
        if keff > 0:
            du -= _active_matvec(plan.u, plan.tau, plan.tau1, plan.n_p, cp, chunk_q)
    dscores = du.reshape(B, Hkv, Sk).permute(0, 2, 1).to(scores.dtype)
    return (dq.to(q.dtype), dk.permute(0, 2, 1, 3).to(k.dtype),
            dv.permute(0, 2, 1, 3).to(v.dtype), dscores)
