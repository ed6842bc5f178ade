"""Helpers shared by the GPU kernel tests: availability, references, FlashAttention's rule."""
import math

import pytest
import torch

try:
    from blackwell_sparsek import _C
except Exception:  # extension not built
    _C = None


def hopper_kernels() -> bool:
    return (_C is not None and torch.cuda.is_available()
            and _C.cuda_kernels_available(torch.cuda.current_device()))


requires_hopper = pytest.mark.skipif(not hopper_kernels(),
                                     reason="needs an sm_90 GPU and the built _C extension")


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fills a tensor with NaN so an unwritten element cannot pass a comparison."""
    return t.fill_(float("nan"))


def dense_ref(q, k, v, causal, scale, dtype=torch.float64):
    """Straight from the definition, in `dtype` (float64: the truth; q.dtype: the same-precision
    reference of FlashAttention's error rule). Returns out [B,Sq,H,D] and lse [B,H,Sq]."""
    B, Sq, H, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    qf = q.to(dtype).transpose(1, 2)
    kf = k.to(dtype).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    vf = v.to(dtype).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    s = (qf @ kf.transpose(-1, -2)) * scale
    if causal:
        i = torch.arange(Sq, device=q.device)[:, None] + (Sk - Sq)
        j = torch.arange(Sk, device=q.device)[None, :]
        s = s.masked_fill(j > i, float("-inf"))
    lse = torch.logsumexp(s.float() if dtype != torch.float64 else s, dim=-1)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    out = (p @ vf).transpose(1, 2)
    return out, lse


def assert_fa_rule(out, ref64, ref_low, what, eps):
    """FlashAttention's rule: the kernel's error is at most twice the error of a same-dtype
    reference, plus a small epsilon. NaN placement must match."""
    out = out.double()
    ref64 = ref64.double()
    ref_low = ref_low.double()
    nan_out, nan_ref = torch.isnan(out), torch.isnan(ref64)
    assert torch.equal(nan_out, nan_ref), f"{what}: NaN placement differs " \
        f"({int(nan_out.sum())} vs {int(nan_ref.sum())})"
    finite = ~nan_ref
    err = (out - ref64)[finite].abs().max().item() if finite.any() else 0.0
    err_low = (ref_low - ref64)[finite].abs().max().item() if finite.any() else 0.0
    assert err <= 2 * err_low + eps, f"{what}: max error {err:.3g} > 2 x {err_low:.3g} + {eps}"
    return err


def default_scale(d):
    return 1.0 / math.sqrt(d)
