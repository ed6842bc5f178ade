"""Argument checks of the public API, run in Python before anything is launched.

Every check raises with a message of the form
``"<function>: argument '<name>' <what is wrong>"``:

* ``TypeError`` for a wrong Python type (a non-tensor where a tensor is expected, a float where
  an int is expected) and for a wrong tensor dtype;
* ``ValueError`` for wrong shapes, devices and values (``k_select``, ``window``, ``scale``,
  ``seqlen_q``).

The checks are plain Python on shapes, dtypes and devices, so ``torch.compile`` traces them
(they become guards on the compiled graph) and they cost nothing at run time.
"""

import math
import numbers
import operator
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

# The dtypes q/k/v may have. The sm_90a kernels take fp16/bf16; float32/float64 run the PyTorch
# implementation (float64 mainly for gradient checks).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(fn: str, name: str, what: str, exc=ValueError):
    raise exc(f"{fn}: argument '{name}' {what}")


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def tensor(fn: str, name: str, t) -> Tensor:
    if not isinstance(t, Tensor):
        _fail(fn, name, f"must be a torch.Tensor, got {type(t).__name__}", TypeError)
    return t


def flag(fn: str, name: str, x) -> bool:
    """A bool argument (``causal``, ``return_lse``). Python and numpy bools only: an int here is
    more likely a misplaced positional argument than a flag."""
    if isinstance(x, bool):
        return x
    if type(x).__name__ == "bool_":  # numpy.bool_ without importing numpy
        return bool(x)
    _fail(fn, name, f"must be a bool, got {type(x).__name__}", TypeError)


def integer(fn: str, name: str, x) -> int:
    """A non-negative int argument; numpy integers and other ``__index__`` types are accepted,
    bools and floats are not (``k_select=2.5`` is a bug, not a request to round)."""
    if isinstance(x, bool):
        _fail(fn, name, "must be an int, got bool", TypeError)
    try:
        v = operator.index(x)
    except TypeError:
        _fail(fn, name, f"must be an int, got {type(x).__name__}", TypeError)
    if v < 0:
        _fail(fn, name, f"must be >= 0, got {v}")
    return v


def k_window(fn: str, k_select, window) -> Tuple[int, int]:
    k_select = integer(fn, "k_select", k_select)
    window = integer(fn, "window", window)
    if k_select == 0 and window == 0:
        _fail(fn, "k_select", "and 'window' must not both be 0 (no key would be attended)")
    return k_select, window


def scale(fn: str, s, head_dim: int) -> float:
    """Resolve the softmax scale: ``None`` means ``1 / sqrt(head_dim)``; otherwise a finite
    positive real number."""
    if s is None:
        return 1.0 / math.sqrt(head_dim)
    # Real numbers only: a 0-d tensor would need a device sync (and a graph break under
    # torch.compile) to become the float the kernels take.
    if isinstance(s, bool) or not isinstance(s, numbers.Real):
        _fail(fn, "scale", f"must be a float or None, got {type(s).__name__}", TypeError)
    # Written with comparisons only (NaN fails them) so that a symbolic float under
    # torch.compile(dynamic=True) stays traceable.
    if not (0.0 < s < math.inf):
        _fail(fn, "scale", f"must be finite and > 0, got {s}")
    return s if isinstance(s, float) else float(s)


def qkv(fn: str, q, k, v) -> Tuple[int, int, int, int, int, int]:
    """q [B, Sq, H, D], k and v [B, Sk, Hkv, D], one float dtype, one device, H % Hkv == 0.
    Returns ``(B, Sq, H, D, Sk, Hkv)``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        tensor(fn, name, t)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            what = "[B, Sq, H, D]" if name == "q" else "[B, Sk, Hkv, D]"
            _fail(fn, name, f"must be 4-D {what} (layout BSHD), got shape {_shape(t.shape)}")
    if q.dtype not in FLOAT_DTYPES:
        _fail(fn, "q", "must have dtype float16, bfloat16, float32 or float64, got "
              f"{q.dtype}", TypeError)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            _fail(fn, name, f"must have the dtype of q ({q.dtype}), got {t.dtype}", TypeError)
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            _fail(fn, name, f"must be on the device of q ({q.device}), got {t.device}")
    B, Sq, H, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    want = (B, Sk, Hkv, D)
    if tuple(k.shape) != want:
        _fail(fn, "k", f"must have shape [B, Sk, Hkv, D] = [{B}, Sk, Hkv, {D}] (B and D of "
              f"q), got {_shape(k.shape)}")
    if tuple(v.shape) != want:
        _fail(fn, "v", f"must have shape [B, Sk, Hkv, D] = {_shape(want)} (like k), got "
              f"{_shape(v.shape)}")
    if D == 0:
        _fail(fn, "q", "must have a head dim D > 0, got shape " + _shape(q.shape))
    if Hkv == 0 or H % Hkv != 0:
        _fail(fn, "k", f"must have a number of heads Hkv (dim 2, {Hkv}) that divides the "
              f"number of query heads H (dim 2 of q, {H})")
    return B, Sq, H, D, Sk, Hkv


def scores(fn: str, s, B: int, Sk: int, Hkv: int, device: Optional[torch.device]) -> None:
    """scores [B, Sk, Hkv], any floating dtype (the caller casts), on ``device``."""
    tensor(fn, "scores", s)
    if not s.is_floating_point():
        _fail(fn, "scores", f"must be a floating-point tensor, got {s.dtype}", TypeError)
    if s.dim() != 3 or (B is not None and tuple(s.shape) != (B, Sk, Hkv)):
        want = "[B, Sk, Hkv]" if B is None else f"[B, Sk, Hkv] = {_shape((B, Sk, Hkv))}"
        _fail(fn, "scores", f"must have shape {want}, got {_shape(s.shape)}")
    if device is not None and s.device != device:
        _fail(fn, "scores", f"must be on the device of q ({device}), got {s.device}")


def seqlen_q(fn: str, sq, sk: int) -> int:
    sq = integer(fn, "seqlen_q", sq)
    if sq > sk:
        _fail(fn, "seqlen_q", f"must be <= Sk (queries are end-aligned to the keys), got "
              f"seqlen_q={sq} > Sk={sk}")
    return sq


def sparsek_seqlens(fn: str, sq: int, sk: int) -> None:
    if sq > sk:
        _fail(fn, "q", f"must have Sq <= Sk for SparseK (queries are end-aligned to the keys), "
              f"got Sq={sq} > Sk={sk}")
