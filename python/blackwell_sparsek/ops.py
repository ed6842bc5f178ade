"""The ``torch.library`` operators of BlackwellSparseK (namespace ``blackwell_sparsek``).

Schemas (all outputs are freshly allocated and contiguous; layout BSHD as in SPEC section 1)::

    attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale)
        -> (Tensor out, Tensor lse)
    attention_bwd(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout,
                  Tensor? dlse, bool causal, float scale)
        -> (Tensor dq, Tensor dk, Tensor dv)
    sparsek_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor scores, SymInt k_select,
                          SymInt window, float scale)
        -> (Tensor out, Tensor lse)
    sparsek_attention_bwd(Tensor q, Tensor k, Tensor v, Tensor scores, Tensor out, Tensor lse,
                          Tensor dout, Tensor? dlse, SymInt k_select, SymInt window, float scale)
        -> (Tensor dq, Tensor dk, Tensor dv, Tensor dscores)
    sparsek_select(Tensor scores, SymInt seqlen_q, SymInt k_select, SymInt window)
        -> (Tensor tau, Tensor theta_val, Tensor theta_idx, Tensor n_active)
    sparsek_select_bwd(Tensor scores, Tensor tau, Tensor theta_idx, Tensor n_active,
                       Tensor grad_tau, Tensor grad_theta_val, SymInt seqlen_q, SymInt window)
        -> Tensor dscores

These are the low-level ops: they expect arguments already checked and normalised by
:mod:`blackwell_sparsek.functional` (scale resolved to a float, scores float32 -- float64 with
float64 inputs). Dtypes: ``out`` has q's dtype; ``lse`` [B, H, Sq] is float32 (float64 for
float64 inputs); gradients have the dtypes of their inputs; ``tau``/``theta_val`` [B, Hkv, Sq]
are float32 (float64 for float64 scores), ``theta_idx``/``n_active`` int32.

Implementation (see :mod:`blackwell_sparsek._backend`): the sm_90a kernel through
``blackwell_sparsek._C`` on the current CUDA stream when it can run, else the PyTorch reference
with a one-time warning. Autograd is registered for the three forward ops. The backward runs
the CUDA kernel when the build has one and otherwise -- today always -- the PyTorch
implementation (``reference.attention_bwd_ref`` / ``reference.sparsek_attention_bwd_ref``): the
slow path, exact but O(S (k + window)) PyTorch work. Double backward is not supported.
Every op has a fake (meta) implementation, so ``torch.compile(fullgraph=True)`` traces them.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _backend
from . import reference as _ref

__all__ = [
    "attention_fwd",
    "attention_bwd",
    "sparsek_attention_fwd",
    "sparsek_attention_bwd",
    "sparsek_select",
    "sparsek_select_bwd",
]

_NS = "blackwell_sparsek"


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _contig(*ts):
    # Real and fake implementations must report the same strides (opcheck compares them); the
    # reference returns some results as permuted views, so every result is made contiguous.
    return tuple(t.contiguous() for t in ts)


def _run_kernel(op: str, device: torch.device, launch) -> bool:
    """Run ``launch(stream)`` on ``device``'s current stream; False (after a one-time warning)
    when the build lacks this kernel."""
    try:
        with torch.cuda.device(device):
            launch(_backend.stream_handle(device))
    except NotImplementedError as e:
        _backend.not_implemented(op, e)
        return False
    _backend.calls["kernel", op] += 1
    return True


def _ran_reference(op: str) -> None:
    _backend.calls["reference", op] += 1


# ---------------------------------------------------------------------------------------------
# dense attention
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, causal: bool,
                  scale: float) -> Tuple[Tensor, Tensor]:
    """Dense attention forward: ``(out [B, Sq, H, D], lse [B, H, Sq])`` (SPEC section 2)."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    decision = _backend.choose("attention_fwd", q.device, q.dtype, D)
    if decision is None:
        out = torch.empty((B, Sq, H, D), dtype=q.dtype, device=q.device)
        lse = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
        if Sk == 0:  # no key at all: the definition gives out 0, lse -inf; nothing to launch
            return out.zero_(), lse.fill_(float("-inf"))
        C = _backend.extension()
        qd, kd, vd = (_backend.kernel_operand(t) for t in (q, k, v))
        if _run_kernel("attention_fwd", q.device, lambda s: C.attention_fwd(
                qd, kd, vd, out, lse, bool(causal), float(scale), s)):
            return out, lse
    else:
        _backend.fallback(decision)
    _ran_reference("attention_fwd")
    with torch.no_grad():
        out, lse = _ref.attention_ref(q.detach(), k.detach(), v.detach(), bool(causal),
                                      float(scale))
    return _contig(out, lse)


@attention_fwd.register_fake
def _(q, k, v, causal, scale):
    B, Sq, H, D = q.shape
    return (q.new_empty((B, Sq, H, D)),
            q.new_empty((B, H, Sq), dtype=_lse_dtype(q.dtype)))


@torch.library.custom_op(f"{_NS}::attention_bwd", mutates_args=())
def attention_bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                  dlse: Optional[Tensor], causal: bool,
                  scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Dense attention backward: ``(dq, dk, dv)`` given the forward's out and lse and the
    incoming gradients (``dlse`` may be None). CUDA kernel when the build has one, else the
    PyTorch slow path (``reference.attention_bwd_ref``)."""
    decision = _backend.choose("attention_bwd", q.device, q.dtype, q.shape[3])
    if decision is None:
        dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
        C = _backend.extension()
        args = [_backend.kernel_operand(t) for t in (q, k, v, out, dout)]
        lse_d = lse.detach().contiguous()
        dlse_d = None if dlse is None else dlse.detach().to(torch.float32).contiguous()
        if _run_kernel("attention_bwd", q.device, lambda s: C.attention_bwd(
                *args, lse_d, dlse_d, dq, dk, dv, bool(causal), float(scale), s)):
            return dq, dk, dv
    else:
        _backend.fallback(decision)
    _ran_reference("attention_bwd")
    with torch.no_grad():
        res = _ref.attention_bwd_ref(q.detach(), k.detach(), v.detach(), out.detach(),
                                     lse.detach(), dout.detach(),
                                     None if dlse is None else dlse.detach(), bool(causal),
                                     float(scale))
    return _contig(*res)


@attention_bwd.register_fake
def _(q, k, v, out, lse, dout, dlse, causal, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _attention_setup(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.scale = causal, scale


def _attention_backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None:  # only lse was used
        dout = torch.zeros_like(out)
    dq, dk, dv = attention_bwd(q, k, v, out, lse, dout, dlse, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None


attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


# ---------------------------------------------------------------------------------------------
# SparseK attention
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::sparsek_attention_fwd", mutates_args=())
def sparsek_attention_fwd(q: Tensor, k: Tensor, v: Tensor, scores: Tensor, k_select: int,
                          window: int, scale: float) -> Tuple[Tensor, Tensor]:
    """SparseK attention forward (selection included): ``(out, lse)`` (SPEC section 1)."""
    B, Sq, H, D = q.shape
    decision = _backend.choose("sparsek_attention_fwd", q.device, q.dtype, D, scores.dtype)
    if decision is None:
        out = torch.empty((B, Sq, H, D), dtype=q.dtype, device=q.device)
        lse = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
        C = _backend.extension()
        qd, kd, vd = (_backend.kernel_operand(t) for t in (q, k, v))
        sd = _backend.kernel_operand(scores, aligned=False)
        # The selection summaries and per-tile unions live in scratch from PyTorch's caching
        # allocator: no allocation outside it (which it could not reuse or account for) per call.
        ws = torch.empty(C.sparsek_attention_fwd_workspace_size(qd, kd, vd, sd, int(k_select),
                                                                int(window)),
                         dtype=torch.uint8, device=q.device)
        if _run_kernel("sparsek_attention_fwd", q.device, lambda s: C.sparsek_attention_fwd(
                qd, kd, vd, sd, out, lse, int(k_select), int(window), float(scale), s, ws)):
            return out, lse
    else:
        _backend.fallback(decision)
    _ran_reference("sparsek_attention_fwd")
    with torch.no_grad():
        out, lse = _ref.sparsek_attention_ref(q.detach(), k.detach(), v.detach(),
                                              scores.detach(), int(k_select), int(window),
                                              float(scale))
    return _contig(out, lse)


@sparsek_attention_fwd.register_fake
def _(q, k, v, scores, k_select, window, scale):
    B, Sq, H, D = q.shape
    return (q.new_empty((B, Sq, H, D)),
            q.new_empty((B, H, Sq), dtype=_lse_dtype(q.dtype)))


@torch.library.custom_op(f"{_NS}::sparsek_attention_bwd", mutates_args=())
def sparsek_attention_bwd(q: Tensor, k: Tensor, v: Tensor, scores: Tensor, out: Tensor,
                          lse: Tensor, dout: Tensor, dlse: Optional[Tensor], k_select: int,
                          window: int, scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """SparseK attention backward: ``(dq, dk, dv, dscores)``, including the gradient through
    the SparseK operator into the scores. CUDA kernel when the build has one, else the PyTorch
    slow path (``reference.sparsek_attention_bwd_ref``, chunked, O(S (k + window)) memory)."""
    decision = _backend.choose("sparsek_attention_bwd", q.device, q.dtype, q.shape[3],
                               scores.dtype)
    if decision is None:
        dq, dk, dv, ds = (torch.empty(t.shape, dtype=t.dtype, device=t.device)
                          for t in (q, k, v, scores))
        C = _backend.extension()
        args = [_backend.kernel_operand(t) for t in (q, k, v)]
        sd = _backend.kernel_operand(scores, aligned=False)
        od, dod = _backend.kernel_operand(out), _backend.kernel_operand(dout)
        lse_d = lse.detach().contiguous()
        dlse_d = None if dlse is None else dlse.detach().to(torch.float32).contiguous()
        if _run_kernel("sparsek_attention_bwd", q.device, lambda s: C.sparsek_attention_bwd(
                *args, sd, od, dod, lse_d, dlse_d, dq, dk, dv, ds, int(k_select), int(window),
                float(scale), s)):
            return dq, dk, dv, ds
    else:
        _backend.fallback(decision)
    _ran_reference("sparsek_attention_bwd")
    with torch.no_grad():
        res = _ref.sparsek_attention_bwd_ref(q.detach(), k.detach(), v.detach(),
                                             scores.detach(), out.detach(), lse.detach(),
                                             dout.detach(),
                                             None if dlse is None else dlse.detach(),
                                             int(k_select), int(window), float(scale))
    return _contig(*res)


@sparsek_attention_bwd.register_fake
def _(q, k, v, scores, out, lse, dout, dlse, k_select, window, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (q, k, v, scores))


def _sparsek_setup(ctx, inputs, output):
    q, k, v, scores, k_select, window, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, scores, out, lse)
    ctx.k_select, ctx.window, ctx.scale = k_select, window, scale


def _sparsek_backward(ctx, dout, dlse):
    q, k, v, scores, out, lse = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, ds = sparsek_attention_bwd(q, k, v, scores, out, lse, dout, dlse, ctx.k_select,
                                           ctx.window, ctx.scale)
    return dq, dk, dv, ds, None, None, None


sparsek_attention_fwd.register_autograd(_sparsek_backward, setup_context=_sparsek_setup)


# ---------------------------------------------------------------------------------------------
# the SparseK operator (selection summary)
# ---------------------------------------------------------------------------------------------


def _summary_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op(f"{_NS}::sparsek_select", mutates_args=())
def sparsek_select(scores: Tensor, seqlen_q: int, k_select: int,
                   window: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The SparseK operator per query: ``(tau, theta_val, theta_idx, n_active)``, each
    [B, Hkv, Sq] (conventions of ``reference.sparsek_operator_ref``). Differentiable in
    ``tau`` (d tau_p / d u_j = [j in A_p] / |A_p|) and ``theta_val`` (= u at theta_idx)."""
    B, Sk, Hkv = scores.shape
    decision = _backend.choose("sparsek_select", scores.device, scores_dtype=scores.dtype)
    if decision is None:
        shape = (B, Hkv, seqlen_q)
        tau = torch.empty(shape, dtype=torch.float32, device=scores.device)
        theta_val = torch.empty_like(tau)
        theta_idx = torch.empty(shape, dtype=torch.int32, device=scores.device)
        n_active = torch.empty_like(theta_idx)
        C = _backend.extension()
        sd = _backend.kernel_operand(scores, aligned=False)
        # Device scratch (from 2049 keys the chunk table, beyond 16384 the sort): from PyTorch's
        # caching allocator, as for the forward (0 bytes, no allocation, for short sequences).
        nbytes = C.sparsek_select_workspace_size(sd, int(seqlen_q), int(k_select), int(window))
        ws = torch.empty(nbytes, dtype=torch.uint8, device=scores.device) if nbytes else None
        if _run_kernel("sparsek_select", scores.device, lambda s: C.sparsek_select(
                sd, int(seqlen_q), int(k_select), int(window), tau, theta_val, theta_idx,
                n_active, s, ws)):
            return tau, theta_val, theta_idx, n_active
    else:
        _backend.fallback(decision)
    _ran_reference("sparsek_select")
    with torch.no_grad():
        res = _ref.sparsek_operator_ref(scores.detach(), int(seqlen_q), int(k_select),
                                        int(window))
    return _contig(*res)


@sparsek_select.register_fake
def _(scores, seqlen_q, k_select, window):
    B, Sk, Hkv = scores.shape
    fdt = _summary_dtype(scores.dtype)
    shape = (B, Hkv, seqlen_q)
    return (scores.new_empty(shape, dtype=fdt), scores.new_empty(shape, dtype=fdt),
            scores.new_empty(shape, dtype=torch.int32),
            scores.new_empty(shape, dtype=torch.int32))


# Bound on the elements of one chunk's [B, Hkv, c, Sk] membership mask in sparsek_select_bwd.
_SELECT_BWD_CHUNK_ELEMS = 1 << 24


@torch.library.custom_op(f"{_NS}::sparsek_select_bwd", mutates_args=())
def sparsek_select_bwd(scores: Tensor, tau: Tensor, theta_idx: Tensor, n_active: Tensor,
                       grad_tau: Tensor, grad_theta_val: Tensor, seqlen_q: int,
                       window: int) -> Tensor:
    """Gradient of :func:`sparsek_select` w.r.t. the scores [B, Sk, Hkv]:
    ``du_j = sum_p [j in A_p] grad_tau_p / |A_p| + sum_p [j == theta_idx_p] grad_theta_val_p``
    with ``A_p = {j in C_p : tau_p < u_j < tau_p + 1}`` (rows with n_active = 0 contribute
    nothing through tau). PyTorch, float64, chunked over queries: O(c * Sk) memory per chunk,
    never Sq x Sk."""
    B, Sk, Hkv = scores.shape
    dev, f64 = scores.device, torch.float64
    u = scores.detach().to(f64).permute(0, 2, 1)                       # [B, Hkv, Sk]
    pos = torch.arange(Sk - seqlen_q, Sk, device=dev)
    n_p = (pos - window + 1 if window > 0 else pos + 1).clamp(min=0)   # |C_p|
    na = n_active.to(torch.int64)
    gt = grad_tau.detach().to(f64)
    coef = torch.where(na > 0, gt / na.clamp(min=1).to(f64), torch.zeros_like(gt))
    tau64 = tau.detach().to(f64)
    du = torch.zeros((B, Hkv, Sk), dtype=f64, device=dev)
    jj = torch.arange(Sk, device=dev)
    c = max(1, _SELECT_BWD_CHUNK_ELEMS // max(1, B * Hkv * Sk))
    for i0 in range(0, seqlen_q, c):
        i1 = min(seqlen_q, i0 + c)
        t = tau64[:, :, i0:i1, None]
        a = ((jj < n_p[i0:i1, None]) & (u[:, :, None, :] > t) & (u[:, :, None, :] < t + 1.0))
        du += torch.where(a, coef[:, :, i0:i1, None], torch.zeros((), dtype=f64,
                                                                  device=dev)).sum(2)
    ti = theta_idx.to(torch.int64)
    gth = grad_theta_val.detach().to(f64)
    valid = ti >= 0
    du.scatter_add_(2, ti.clamp(min=0), torch.where(valid, gth, torch.zeros_like(gth)))
    return du.permute(0, 2, 1).to(scores.dtype).contiguous()


@sparsek_select_bwd.register_fake
def _(scores, tau, theta_idx, n_active, grad_tau, grad_theta_val, seqlen_q, window):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


def _select_setup(ctx, inputs, output):
    scores, seqlen_q, k_select, window = inputs
    tau, theta_val, theta_idx, n_active = output
    ctx.save_for_backward(scores, tau, theta_idx, n_active)
    ctx.seqlen_q, ctx.window = seqlen_q, window


def _select_backward(ctx, g_tau, g_theta_val, g_theta_idx, g_n_active):
    scores, tau, theta_idx, n_active = ctx.saved_tensors
    if g_tau is None:
        g_tau = torch.zeros_like(tau)
    if g_theta_val is None:
        g_theta_val = torch.zeros_like(tau)
    ds = sparsek_select_bwd(scores, tau, theta_idx, n_active, g_tau, g_theta_val, ctx.seqlen_q,
                            ctx.window)
    return ds, None, None, None


sparsek_select.register_autograd(_select_backward, setup_context=_select_setup)
