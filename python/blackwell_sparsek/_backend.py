"""Which implementation runs: the sm_90a kernels of ``blackwell_sparsek._C`` or the PyTorch
reference (``blackwell_sparsek.reference``), and the one-time warning when it is the latter.

The decision is made per call, inside the real implementation of each ``torch.library`` op
(never at trace time), in this order:

1. :func:`force_reference` is active -> reference, silently (the caller asked for it);
2. the tensors are not on a CUDA device -> reference;
3. ``blackwell_sparsek._C`` does not import -> reference;
4. ``_C.cuda_kernels_available(device)`` is false (not an sm_90 GPU, or a build without CUDA)
   -> reference;
5. the dtype / head dim is not one the kernels take (fp16/bf16, D in {64, 128}) -> reference;
6. otherwise the kernel; a ``NotImplementedError`` from it (a lean build that lacks this
   instantiation, a backward that has no CUDA kernel yet) -> reference.

Each fallback reason warns once per process (``warnings.warn``, category
:class:`FallbackWarning`), never silently.
"""

import collections
import contextlib
import os
import sys
import threading
import warnings
from typing import Optional

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.float16, torch.bfloat16)
KERNEL_HEAD_DIMS = (64, 128)


class FallbackWarning(UserWarning):
    """The PyTorch implementation (slow path) runs instead of the CUDA kernels."""


_lock = threading.Lock()
_warned: set = set()
_C = None
_C_error: Optional[str] = None
_C_loaded = False
_force_ref = threading.local()

# How often each op ran each implementation in this process, e.g. calls["kernel",
# "sparsek_attention_fwd"]: lets tests (and users chasing a slow run) see which path ran.
calls: "collections.Counter[tuple]" = collections.Counter()


def extension():
    """The compiled module ``blackwell_sparsek._C``, or None when it does not import (imported
    lazily: the package must work on machines where it was never built)."""
    global _C, _C_error, _C_loaded
    if not _C_loaded:
        with _lock:
            if not _C_loaded:
                try:
                    from . import _C as mod  # noqa: PLC0415
                    _C = mod
                except Exception as e:  # ImportError, or a broken .so (undefined symbol, ...)
                    _C_error = f"{type(e).__name__}: {e}"
                _C_loaded = True
    return _C


def extension_error() -> Optional[str]:
    extension()
    return _C_error


def kernels_available(device=None) -> bool:
    """True when the sm_90a kernels can run on ``device`` (default: the current CUDA device):
    the extension imports, was built with CUDA kernels, and the device is an sm_90 GPU."""
    if not torch.cuda.is_available():
        return False
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None \
        else torch.device(device)
    if dev.type != "cuda":
        return False
    C = extension()
    if C is None:
        return False
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return bool(C.cuda_kernels_available(index))


def build_info() -> str:
    C = extension()
    if C is None:
        return f"blackwell_sparsek._C not available ({_C_error})"
    return C.build_info()


@contextlib.contextmanager
def force_reference(enabled: bool = True):
    """Within this context (this thread), every op runs the PyTorch reference, without a
    warning. Meant for tests and for comparing the kernels with the reference."""
    prev = getattr(_force_ref, "on", False)
    _force_ref.on = enabled
    try:
        yield
    finally:
        _force_ref.on = prev


def reference_forced() -> bool:
    return getattr(_force_ref, "on", False)


_SKIP_PREFIXES = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
                  os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside this package and torch (the op dispatch puts
    several torch frames between the user's call and the implementation), so the warning points
    at the user's line."""
    level, f = 2, sys._getframe(2)  # 1 = warn_fallback's caller
    while f is not None and f.f_code.co_filename.startswith(_SKIP_PREFIXES):
        f, level = f.f_back, level + 1
    return level if f is not None else 2


def warn_fallback(key: str, reason: str) -> None:
    """Warn once per process per ``key`` that the PyTorch implementation runs."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"blackwell_sparsek: CUDA kernels unavailable ({reason}); using the PyTorch "
                  f"implementation (slow path)", FallbackWarning, stacklevel=_user_stacklevel())


def reset_warnings() -> None:
    """Forget which fallback warnings were given (for tests)."""
    with _lock:
        _warned.clear()


def _device_reason(device: torch.device):
    """(key, reason) when no kernel can run on ``device`` at all, else None."""
    if device.type != "cuda":
        return "device:" + device.type, f"tensors are on {device.type}"
    C = extension()
    if C is None:
        return "no_extension", f"blackwell_sparsek._C is not built or does not import: {_C_error}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if not C.cuda_kernels_available(index):
        cap = torch.cuda.get_device_capability(index)
        return (f"arch:{index}",
                f"{device} is sm_{cap[0]}{cap[1]} or this build has no sm_90a kernels; "
                f"the kernels need an sm_90 GPU (H100/H200)")
    return None


def choose(op: str, device: torch.device, dtype: Optional[torch.dtype] = None,
           head_dim: Optional[int] = None, scores_dtype: Optional[torch.dtype] = None):
    """None when the kernel for ``op`` should run, else ``(key, reason)`` for the fallback.
    A forced reference returns ``("", "")`` (no warning)."""
    if reference_forced():
        return "", ""
    r = _device_reason(device)
    if r is not None:
        return r
    if dtype is not None and dtype not in KERNEL_DTYPES:
        return f"dtype:{dtype}", f"{op}: the kernels take float16/bfloat16, got {dtype}"
    if head_dim is not None and head_dim not in KERNEL_HEAD_DIMS:
        return (f"head_dim:{head_dim}",
                f"{op}: the kernels take head dim 64 or 128, got {head_dim}")
    if scores_dtype is not None and scores_dtype != torch.float32:
        return f"scores_dtype:{scores_dtype}", f"{op}: the kernels take float32 scores"
    return None


def fallback(decision) -> None:
    """Warn (once) for a fallback decision returned by :func:`choose`."""
    key, reason = decision
    if key:
        warn_fallback(key, reason)


def not_implemented(op: str, err: NotImplementedError) -> None:
    """The kernel raised NotImplementedError (lean build, no CUDA backward yet): warn once per
    op and let the caller run the reference."""
    warn_fallback(f"not_implemented:{op}", f"{op}: {err}")


def stream_handle(device: torch.device) -> int:
    """The raw cudaStream_t of the current PyTorch stream of ``device``."""
    return torch.cuda.current_stream(device).cuda_stream


def kernel_operand(t: Tensor, aligned: bool = True) -> Tensor:
    """``t`` detached (DLPack refuses tensors that require grad) and in a layout the kernels
    accept: last dim contiguous, 16-byte aligned base, every other stride a multiple of 16
    bytes (what TMA / cp.async need; ``aligned=False`` for the scores, which are read with
    scalar loads and need only the last dim contiguous). Any stride is kept when it qualifies,
    so a BHSD tensor viewed as BSHD goes in without a copy; otherwise one contiguous copy is
    made."""
    t = t.detach()
    esz = t.element_size()
    ok = t.dim() == 0 or t.size(-1) <= 1 or t.stride(-1) == 1
    if ok and aligned and t.is_cuda and t.numel() > 0:
        per16 = max(1, 16 // esz)
        ok = t.data_ptr() % 16 == 0 and all(
            s % per16 == 0 for n, s in zip(t.shape[:-1], t.stride()[:-1]) if n > 1)
    return t if ok else t.contiguous()
